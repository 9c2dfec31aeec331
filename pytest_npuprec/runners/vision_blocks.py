"""The blocks of a vision tower (vLLM's or transformers'), and the parts the layer-by-layer diagnosis compares.

Both families keep them as `<...>visual.blocks`, a ModuleList whose entries have `attn` and `mlp` (Qwen2.5-VL,
Qwen3-VL): each block is x + attn(norm1(x)), then x + mlp(norm2(x)), over the patches of every image of the pass.
Nothing heavy imported: both sides call this with their own torch model."""
from __future__ import annotations

from typing import Any

VISION_BLOCKS = ("attention", "mlp")
_ATTRIBUTE = {"attention": "attn", "mlp": "mlp"}


def vision_blocks(model: Any) -> list[Any]:
    """The vision tower's blocks in order (empty for a model without one); `model` may be the tower itself."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "blocks" and hasattr(module, "__len__"):
            blocks = list(module)
            if blocks and all(hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks):
                return blocks
    return []


def vision_block_module(block: Any, part: str) -> Any:
    return getattr(block, _ATTRIBUTE[part])


def flat(output: Any) -> Any:
    """A block's (or its part's) output as [patches x hidden] (vLLM's vision blocks carry a batch axis of 1)."""
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    return tensor.reshape(-1, tensor.shape[-1])
