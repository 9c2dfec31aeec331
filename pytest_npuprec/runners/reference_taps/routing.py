"""Routing tap (reference side): the router logits transformers returns with `output_router_logits=True`,
one [tokens x experts] tensor per MoE layer, kept at the scored positions in FP32 (the margins between
experts are measured on them: measure/routing.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...atomic import atomic_file
from ...errors import NpuprecError


def forward_kwargs() -> dict[str, Any]:
    return {"output_router_logits": True}


def moe_layers(config: Any) -> list[int]:
    """Decoder layers with a routed MoE block: ERNIE's moe_layer_start_index / end / interval, else the Qwen-MoE
    convention (decoder_sparse_step, mlp_only_layers; every layer for families without those keys)."""
    n = int(config.num_hidden_layers)
    start = getattr(config, "moe_layer_start_index", None)
    if start is not None:
        end = getattr(config, "moe_layer_end_index", -1)
        end = n - 1 if end is None or end < 0 else int(end)
        interval = int(getattr(config, "moe_layer_interval", 1) or 1)
        return [i for i in range(n) if int(start) <= i <= end and (i + 1) % interval == 0]
    step = int(getattr(config, "decoder_sparse_step", 1) or 1)
    dense = set(getattr(config, "mlp_only_layers", None) or ())
    return [i for i in range(n) if i not in dense and (i + 1) % step == 0]


def top_k(config: Any) -> int:
    for key in ("num_experts_per_tok", "moe_k", "moe_topk", "top_k"):
        value = getattr(config, key, None)
        if value:
            return int(value[0] if isinstance(value, (list, tuple)) else value)
    raise NpuprecError(f"{type(config).__name__}: no top-k key (num_experts_per_tok, moe_k, moe_topk) in the "
                       "model config; routing cannot be compared")


def write(model: Any, output: Any, keep: Any, path: Path) -> None:
    """router_logits [P x L x E] float32, layers [L], top_k."""
    import torch

    _refuse_correction_bias(model)
    router_logits = getattr(output, "router_logits", None)
    if not router_logits:
        raise NpuprecError(f"{type(model).__name__} returned no router_logits with output_router_logits=True; "
                           "routing cannot be captured on the reference side")
    per_layer = [r.float().reshape(-1, r.shape[-1]).index_select(0, keep) for r in router_logits if r is not None]
    layers = moe_layers(model.config)
    if len(layers) != len(per_layer):
        layers = list(range(len(per_layer)))  # a family without the Qwen-MoE layer keys: MoE layers in order
    logits = torch.stack(per_layer, 1).numpy().astype(np.float32)
    with atomic_file(path, "wb") as f:
        np.savez(f, router_logits=logits, layers=np.asarray(layers, dtype=np.int32),
                 top_k=np.int32(top_k(model.config)))


def _refuse_correction_bias(model: Any) -> None:
    """Routers that choose on softmax + a per-expert correction bias (ERNIE's moe_statics, DeepSeek's
    e_score_correction_bias) choose on other scores than the logits compared here: refused while non-zero."""
    for name, tensor in model.named_parameters():
        if name.endswith("e_score_correction_bias") and tensor.is_meta:  # a streamed model between its units
            tensor = model.npuprec_stored_parameter(name)
        if name.endswith("e_score_correction_bias") and bool(tensor.detach().abs().max() > 0):
            raise NpuprecError(f"{type(model).__name__}: {name} is non-zero: experts are chosen on softmax + that "
                               "bias, which the routing comparison does not model yet; routing cannot be compared")
