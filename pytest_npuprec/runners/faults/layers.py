"""Device faults confined to one decoder layer and one of its blocks (`--npuprec-fault NAME:layer=N:block=B`):
the planted error the layer-by-layer diagnosis (pytest_npuprec/diagnose.py) must find at that layer and block.

A forward hook on the block's module, so only an eager engine runs it (a compiled decoder stack never calls module
hooks); the diagnosis reruns the device eagerly, with the same fault.
"""
from __future__ import annotations

from typing import Any

from ..decoder_layers import BLOCKS, block_module, decoder_layers

DEFAULT_LAYER = 1
DEFAULT_BLOCK = "mlp"


def _block(model: Any, fault: str, layer: int, block: str) -> Any:
    layers = decoder_layers(model)
    if not layers:
        raise RuntimeError(f"{fault} fault: the model has no decoder layers with self_attn and mlp")
    if not 0 <= layer < len(layers):
        raise RuntimeError(f"{fault} fault: layer={layer}, but the model has decoder layers 0..{len(layers) - 1}")
    if block not in BLOCKS:
        raise RuntimeError(f"{fault} fault: block={block!r}; expected one of {', '.join(BLOCKS)}")
    return block_module(layers[layer], block)


def layer_scale(model: Any, factor: float, layer: int = DEFAULT_LAYER, block: str = DEFAULT_BLOCK,
                eager: bool = True) -> str:
    """One block of one decoder layer returns its output x `factor` (a wrong per-layer scale: a dequantisation
    scale read for the wrong layer, a fused kernel's output multiplier). `eager`: whether the engine runs its
    decoder stack eagerly (a compiled one never calls the hook; the description says so)."""
    module = _block(model, "layer_scale", layer, block)

    def scale(module: Any, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] * factor, *output[1:])
        return output * factor

    module.register_forward_hook(scale, prepend=True)  # before the layers tap copies the output
    return (f"decoder layer {layer} {block} output x{factor:g}" if eager else
            f"decoder layer {layer} {block} output x{factor:g} NOT APPLIED: a module hook, and this engine runs a "
            "compiled decoder stack that never calls it (the eager rerun of --npuprec-diagnose gets it)")


FAULTS = {"layer_scale": layer_scale}
