"""Vision-language device faults: the vision side of a port wrong in the ways vllm-ascend's were (issue 20:
vision attention on another kernel path, an overflowing or mis-scaled tower, a processor normalising
differently, M-RoPE positions collapsed). Each hooks vLLM's `model.visual` (the tower with its patch merger)
or the positions entering the model; a model without a vision tower refuses them."""
from __future__ import annotations

from typing import Any

from ..vision_blocks import vision_block_module, vision_blocks

DEFAULT_VISION_BLOCK = 0


def _visual(model: Any, fault: str) -> Any:
    visual = getattr(model, "visual", None)
    if visual is None:
        raise RuntimeError(f"{fault} fault: the model has no vision tower (`model.visual`); it applies to "
                           "vision-language models only")
    return visual


def vision_scale(model: Any, factor: float, layer: int | None = None, block: str | None = None) -> str:
    """The tower's output (the embeddings entering the language model, deepstack ones too) x factor; with
    `layer=N` only vision block N's attention or MLP (`block`, default mlp) output x factor (a vision kernel wrong
    in one block: the planted error the layer-by-layer diagnosis must find there)."""

    def hook(module: Any, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] * factor, *output[1:])
        return output * factor

    visual = _visual(model, "vision_scale")
    if layer is None and block is None:
        visual.register_forward_hook(hook)
        return f"vision tower output x{factor:g}"
    blocks = vision_blocks(visual)
    index, part = DEFAULT_VISION_BLOCK if layer is None else layer, block or "mlp"
    if not 0 <= index < len(blocks):
        raise RuntimeError(f"vision_scale fault: layer={index}, but the vision tower has blocks 0..{len(blocks) - 1}")
    vision_block_module(blocks[index], part).register_forward_hook(hook, prepend=True)  # before any capture hook
    return f"vision block {index} {part} output x{factor:g}"


def image_norm(model: Any, shift: float) -> str:
    """Pixels normalised with another mean: every normalised pixel value entering the tower + shift (a mean off
    by shift x std), as a device-side processor with the wrong image_mean would give.

    vLLM >= 0.32 normalises on the device (`visual.input_norm`, a per-channel affine on the raw pixels, when the
    model supports mm_device_do_normalize): the shift goes onto that module's output, the normalised pixels; a
    tower fed normalised pixels by the processor gets it on its input instead."""
    visual = _visual(model, "image_norm")
    norm = getattr(visual, "input_norm", None)
    if norm is not None:
        norm.register_forward_hook(lambda module, args, output: output + shift)
        return f"normalised pixels {shift:+g} after the device's input normalisation (image mean off by {shift:g} x std)"

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
        if args:
            return (args[0] + shift, *args[1:]), kwargs
        name = next(k for k in ("x", "pixel_values", "hidden_states") if k in kwargs)
        return args, dict(kwargs, **{name: kwargs[name] + shift})

    visual.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return f"normalised pixels {shift:+g} (image mean off by {shift:g} x std)"


def vision_causal(model: Any, _: float) -> str:
    """Vision attention computed causally (each patch sees only the patches before it), the mask of a text
    kernel path taken for the tower."""
    import torch
    import torch.nn.functional as F

    layers = [m for m in _visual(model, "vision_causal").modules() if hasattr(m, "_forward_sdpa")]
    if not layers:
        raise RuntimeError("vision_causal fault: no vision attention with `_forward_sdpa` in the tower")

    def causal(layer: Any) -> Any:
        def forward(query: Any, key: Any, value: Any, cu_seqlens: Any = None) -> Any:
            bsz, q_len = query.size()[:2]
            reshaped = query.dim() != 4
            q, k, v = layer.view_qkv_to_4d(query, key, value, bsz, q_len, key.size(1))
            bounds = cu_seqlens.tolist() if cu_seqlens is not None else [0, q_len]
            chunks = [F.scaled_dot_product_attention(*(t[:, a:b].transpose(1, 2) for t in (q, k, v)),
                                                     is_causal=True, scale=layer.scale).transpose(1, 2)
                      for a, b in zip(bounds[:-1], bounds[1:])]
            out = torch.cat(chunks, dim=1)
            return out.reshape(bsz, q_len, -1) if reshaped else out

        return forward

    for layer in layers:
        layer._forward_sdpa = causal(layer)
    return f"vision attention causal in {len(layers)} layers"


def mrope_collapsed(model: Any, _: float) -> str:
    """M-RoPE positions collapsed to one dimension: the height and width rows of the [3 x tokens] positions
    set to the temporal row, so an image's patches lose their 2-D place (text positions are unchanged)."""
    if not getattr(model, "uses_mrope", False) and getattr(model, "visual", None) is None:
        raise RuntimeError("mrope_collapsed fault: the model does not use M-RoPE")

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if positions is None or positions.dim() != 2:
            return None
        collapsed = positions[:1].expand_as(positions).clone()
        if "positions" in kwargs:
            return args, dict(kwargs, positions=collapsed)
        return (args[0], collapsed, *args[2:]), kwargs

    model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return "M-RoPE positions collapsed to the temporal row"


FAULTS = {"vision_scale": vision_scale, "image_norm": image_norm, "vision_causal": vision_causal,
          "mrope_collapsed": mrope_collapsed}
