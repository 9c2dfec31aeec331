"""Layers tap (worker side): the residual stream after every decoder layer, and each layer's attention and MLP
outputs, at the scored positions (the layer-by-layer diagnosis, pytest_npuprec/diagnose.py); where the model has
them, each MoE layer's router logits and chosen experts (layer_routers.py) and the vision tower's blocks
(vision_blocks.py).

Forward hooks on the decoder layers and on their `self_attn` and `mlp`: they run only in an eager engine (a
compiled decoder stack never calls them), so the diagnosis runs its device engine with enforce_eager, and a pass
where the hooks did not run is reported instead of comparing nothing. vLLM's layers return (hidden, residual),
the residual add fused into the next layer's add-RMSNorm, which also overwrites both tensors in place: the hooks
copy what they see at once (decoder_layers.residual_stream sums the pair).

The hooks are registered the first time the tap is armed (`reset`), so an engine that never asks for it runs
without them. They keep every token of a pass, so the tap is meant for the one prompt a diagnosis reruns.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...atomic import atomic_file
from ..decoder_layers import BLOCKS, block_module, decoder_layers, first_tensor, is_moe, residual_stream
from .layer_routers import RouterWatch
from .vision_blocks import VisionWatch

KINDS = ("output", *BLOCKS)  # what is captured per decoder layer: its output (residual stream), attention, mlp


class LayersTap:
    def __init__(self, layers: list[Any], model: Any):
        self.layers = layers
        self.routers = RouterWatch(model)
        self.vision = VisionWatch(model)
        self.moe = [is_moe(layer) for layer in layers]
        self.hooked = False
        self.pass_out: dict[tuple[str, int], Any] = {}  # (kind, layer) -> [tokens x hidden] of the current pass
        self.rows: dict[tuple[int, int], dict[tuple[str, int], Any]] = {}  # (request, position) -> float32 rows

    def _hook(self, kind: str, index: int) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> None:
            tensor = residual_stream(output) if kind == "output" else first_tensor(output)
            self.pass_out[(kind, index)] = tensor.detach().clone()

        return hook

    def _install(self) -> None:
        for i, layer in enumerate(self.layers):
            layer.register_forward_hook(self._hook("output", i))
            for block in BLOCKS:
                block_module(layer, block).register_forward_hook(self._hook(block, i))
        self.routers.install()
        self.vision.install()
        self.hooked = True

    def start_pass(self) -> None:
        self.pass_out = {}
        self.routers.pass_seen = {}

    def take(self, rows: Any, keys: list[int], positions: list[int]) -> str | None:
        if not self.hooked:
            return None
        expected = [(kind, i) for i in range(len(self.layers)) for kind in KINDS]
        missing = sorted({i for kind, i in expected if (kind, i) not in self.pass_out})
        if missing:
            return (f"layers: the hooks of decoder layers {missing} did not run during a scoring pass (a compiled "
                    "decoder stack bypasses module hooks); the layer-by-layer capture needs an eager engine "
                    "(enforce_eager: true)")
        if self.routers.missing():
            return (f"layers: the routers of MoE layers {self.routers.missing()} were not called in Python during a "
                    "scoring pass; the router / experts split needs an eager engine (enforce_eager: true)")
        picked = {key: t.index_select(0, rows).float().cpu() for key, t in self.pass_out.items()}
        for layer, (logits, ids) in self.routers.picked(rows).items():
            picked[("router_logits", layer)], picked[("router_ids", layer)] = logits, ids
        for i, (key, position) in enumerate(zip(keys, positions)):
            self.rows.setdefault((key, position), {k: v[i] for k, v in picked.items()})
        return None

    def reset(self) -> None:
        if not self.hooked:
            self._install()
        self.rows = {}
        self.vision.reset()

    def write(self, key: int, positions: list[int], path: str) -> None:
        """output / attention / mlp: float32 [L x P x hidden]; moe: bool [L] (the layer's MLP is routed experts);
        router_layers [M], router_logits float32 [M x P x experts], router_ids [M x P x k] of the M MoE layers
        whose router was seen; vision_* [blocks x patches x hidden] when the vision tower ran."""
        import torch

        def stacked(kind: str, indices: list[int]) -> Any:
            return torch.stack([torch.stack([self.rows[(key, p)][(kind, i)] for p in positions]) for i in indices])

        arrays = {kind: stacked(kind, list(range(len(self.layers)))).numpy().astype(np.float32) for kind in KINDS}
        if self.routers.layers:
            arrays.update(router_layers=np.asarray(self.routers.layers, dtype=np.int32),
                          router_logits=stacked("router_logits", self.routers.layers).numpy().astype(np.float32),
                          router_ids=stacked("router_ids", self.routers.layers).numpy().astype(np.int32))
        arrays.update(self.vision.arrays())
        with atomic_file(path, "wb") as f:
            np.savez(f, **arrays, moe=np.asarray(self.moe, dtype=bool))


def install(model: Any) -> LayersTap | None:
    layers = decoder_layers(model)
    return LayersTap(layers, model) if layers else None
