"""Layers tap (reference side): the output of every decoder layer (the residual stream) and of its attention and
MLP, at the scored positions, from forward hooks on transformers' modules (pytest_npuprec/diagnose.py); where the
model has them, each MoE layer's router logits and chosen experts (layer_routers.py) and the vision tower's blocks
(vision_blocks.py).

Hooks rather than output_hidden_states: transformers' last hidden state is taken after the final norm, the
device's layer output before it; and the sub-blocks have no output flag."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...atomic import atomic_file
from ...errors import NpuprecError
from ..decoder_layers import BLOCKS, block_module, decoder_layers, first_tensor, is_moe, residual_stream
from .layer_routers import hook_routers
from .vision_blocks import hook_vision, vision_arrays

KINDS = ("output", *BLOCKS)


def forward_kwargs() -> dict[str, Any]:
    return {}


@contextlib.contextmanager
def recording(model: Any) -> Iterator[None]:
    """Hooks on every decoder layer and its blocks for the forward passes inside; what they saw is kept on the
    model (`_npuprec_layers`: thread -> (kind, layer) -> [tokens x hidden]) for `write`."""
    layers = decoder_layers(model)
    if not layers:
        raise NpuprecError(f"{type(model).__name__}: no decoder layers found (a `layers` list whose entries have "
                           "self_attn and mlp); the layer-by-layer diagnosis cannot capture this model")
    seen: dict[tuple[str, int], Any] = {}
    # per thread: the streamed reference runs each sequence in a thread of its own through the same modules, so a
    # hook keeps only what its own sequence's forward passes produce
    owner = threading.get_ident()
    model.__dict__.setdefault("_npuprec_layers", {})[owner] = seen
    model._npuprec_moe = [is_moe(layer) for layer in layers]

    def hook(kind: str, index: int) -> Any:
        def keep(module: Any, args: tuple, output: Any) -> None:
            if threading.get_ident() != owner:
                return
            tensor = residual_stream(output) if kind == "output" else first_tensor(output)
            seen[(kind, index)] = tensor.detach().reshape(-1, tensor.shape[-1]).float().clone()

        return keep

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook("output", i)))
        handles += [block_module(layer, block).register_forward_hook(hook(block, i)) for block in BLOCKS]
    def mine() -> bool:
        return threading.get_ident() == owner

    model._npuprec_router_layers, router_handles = hook_routers(model, layers, seen, mine)
    model._npuprec_vision_blocks, vision_handles = hook_vision(model, seen, mine)
    handles += router_handles + vision_handles
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def write(model: Any, output: Any, keep: Any, path: Path) -> None:
    """output / attention / mlp: float32 [L x P x hidden]; moe: bool [L]; for the M MoE layers router_layers [M],
    router_logits float32 [M x P x experts], router_ids [M x P x k]; vision_* [blocks x patches x hidden] when the
    vision tower ran (as the worker side writes them)."""
    import torch

    seen, moe = model._npuprec_layers.pop(threading.get_ident()), model._npuprec_moe

    def stacked(kind: str, indices: list[int]) -> Any:
        return torch.stack([seen[(kind, i)].index_select(0, keep) for i in indices]).numpy()

    arrays = {kind: stacked(kind, list(range(len(moe)))).astype(np.float32) for kind in KINDS}
    routers = model._npuprec_router_layers
    if routers:
        arrays.update(router_layers=np.asarray(routers, dtype=np.int32),
                      router_logits=stacked("router_logits", routers).astype(np.float32),
                      router_ids=stacked("router_ids", routers).astype(np.int32))
    arrays.update(vision_arrays(model._npuprec_vision_blocks, seen))
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays, moe=np.asarray(moe, dtype=bool))
