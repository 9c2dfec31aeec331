"""Inside the layers tap (reference side), per MoE decoder layer: the router logits and the experts chosen, from a
forward hook on the layer's `mlp.gate` (transformers' MoE routers return (router_logits, weights, chosen experts);
a plain linear gate returns the logits only, and the top-k of them is what its block chooses)."""
from __future__ import annotations

from typing import Any, Callable

from ..decoder_layers import is_moe
from .routing import top_k


def hook_routers(model: Any, layers: list[Any], seen: dict[tuple[str, int], Any],
                 mine: Callable[[], bool]) -> tuple[list[int], list[Any]]:
    """(MoE layer indices, hook handles): seen[("router_logits", i)] / [("router_ids", i)] filled per forward of
    the recording thread (`mine`)."""
    found, handles = [], []
    if not any(is_moe(layer) for layer in layers):
        return found, handles
    k = top_k(model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config)
    for i, layer in enumerate(layers):
        gate = getattr(layer.mlp, "gate", None) if is_moe(layer) else None
        if gate is None:
            continue

        def keep(module: Any, args: tuple, output: Any, _i: int = i) -> None:
            if not mine():
                return
            logits = output[0] if isinstance(output, (tuple, list)) else output
            logits = logits.detach().reshape(-1, logits.shape[-1]).float()
            ids = output[2] if isinstance(output, (tuple, list)) and len(output) > 2 else logits.topk(k, dim=-1).indices
            seen[("router_logits", _i)] = logits.clone()
            seen[("router_ids", _i)] = ids.detach().reshape(logits.shape[0], -1).long().clone()

        found.append(i)
        handles.append(gate.register_forward_hook(keep))
    return found, handles
