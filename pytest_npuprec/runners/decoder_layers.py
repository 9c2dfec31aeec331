"""The decoder layers of a model (vLLM's or transformers'), and the parts the layer-by-layer diagnosis compares.

Both families keep them as `<...>.layers`, a ModuleList whose entries have `self_attn` and `mlp` (vLLM's and
transformers' Llama, Qwen, Qwen-MoE, MiniCPM). A vision tower's blocks use other names (`attn`), so the text
decoder is the one found. Nothing heavy imported: both sides call this with their own torch model.
"""
from __future__ import annotations

from typing import Any

BLOCKS = ("attention", "mlp")  # the sub-blocks of a decoder layer, in the order they run
_ATTRIBUTE = {"attention": "self_attn", "mlp": "mlp"}


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers in order (empty when the model has none this finds)."""
    best: list[Any] = []
    for name, module in model.named_modules():
        if not name.endswith("layers") or not hasattr(module, "__len__"):
            continue
        layers = list(module)
        if layers and all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers):
            if len(layers) > len(best):
                best = layers
    return best


def block_module(layer: Any, block: str) -> Any:
    return getattr(layer, _ATTRIBUTE[block])


def is_moe(layer: Any) -> bool:
    """A routed-experts MLP (vLLM's FusedMoE blocks and transformers' sparse MoE blocks hold `experts`)."""
    return hasattr(layer.mlp, "experts")


def first_tensor(output: Any) -> Any:
    """The tensor a block returns (transformers' attention returns (output, weights); some MoE blocks
    (output, router_logits))."""
    return output[0] if isinstance(output, (tuple, list)) else output


def residual_stream(output: Any) -> Any:
    """What a decoder layer hands the next one, as the residual stream: vLLM's layers return (hidden, residual)
    with the residual add left to the next layer's fused add-RMSNorm, so the stream is hidden + residual;
    transformers' return the stream itself (or a tuple starting with it)."""
    if isinstance(output, (tuple, list)):
        if len(output) > 1 and output[1] is not None and hasattr(output[1], "shape") \
                and output[1].shape == output[0].shape:
            return output[0] + output[1]
        return output[0]
    return output
