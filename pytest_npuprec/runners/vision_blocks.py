"""The blocks of a vision tower (vLLM's or transformers'), and the parts the layer-by-layer diagnosis compares.

Both families keep them as `<...>visual.blocks`, a ModuleList whose entries have `attn` and `mlp` (Qwen2.5-VL,
Qwen3-VL): each block is x + attn(norm1(x)), then x + mlp(norm2(x)), over the patches of every image of the pass.
vLLM's vision blocks are torch.compile-able modules whose __call__ goes to forward directly (no module hooks, even
eager), so a block's output is taken as norm2's input (x after attention) + the MLP's output, on both sides.
Nothing heavy imported: both sides call this with their own torch model."""
from __future__ import annotations

from typing import Any, Callable

VISION_BLOCKS = ("attention", "mlp")
_ATTRIBUTE = {"attention": "attn", "mlp": "mlp"}


def vision_blocks(model: Any) -> list[Any]:
    """The vision tower's blocks in order (empty for a model without one); `model` may be the tower itself."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "blocks" and hasattr(module, "__len__"):
            blocks = list(module)
            if blocks and all(hasattr(b, "attn") and hasattr(b, "mlp") and hasattr(b, "norm2") for b in blocks):
                return blocks
    return []


def vision_block_module(block: Any, part: str) -> Any:
    return getattr(block, _ATTRIBUTE[part])


def hook_block(block: Any, keep: Callable[[str, Any], None]) -> list[Any]:
    """Forward hooks calling keep(kind, [patches x hidden]) for the block's attention, MLP and output; handles."""
    mid: dict[str, Any] = {}

    def before_norm2(module: Any, args: tuple) -> None:
        mid["x"] = flat(args[0])

    def attention(module: Any, args: tuple, output: Any) -> None:
        keep("attention", flat(output))

    def mlp(module: Any, args: tuple, output: Any) -> None:
        out = flat(output)
        keep("mlp", out)
        keep("output", mid.pop("x") + out)

    return [block.norm2.register_forward_pre_hook(before_norm2),
            vision_block_module(block, "attention").register_forward_hook(attention),
            vision_block_module(block, "mlp").register_forward_hook(mlp)]


def flat(output: Any) -> Any:
    """A block's (or its part's) output as [patches x hidden] (vLLM's vision blocks carry a batch axis of 1)."""
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    return tensor.reshape(-1, tensor.shape[-1])
