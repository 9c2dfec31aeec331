"""Vision tap (reference side): per image, the embeddings transformers puts into the language model (the output
of the model's `get_image_features`: the tower with its patch merger / projector, and Qwen3-VL's deepstack
features), and the multi-dimensional positions of the sequence from the model's own `get_rope_index` (M-RoPE).

Both are taken by wrapping the two methods on the model instance for the one forward call (`recording`), so what
is kept is what the reference ran; a text-only sequence, for which transformers skips get_rope_index, gets its
positions from get_rope_index on the same ids with no image tokens. Arrays as worker_taps/vision.py writes them.
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...atomic import atomic_file
from ...errors import NpuprecError


class TowerReference:
    """The reference side of one tower tap: `method` is the transformers method whose output is the embeddings
    entering the language model (`get_image_features`; an audio tower: `get_audio_features`), `token_keys` the
    config keys of its placeholder token id."""

    def __init__(self, name: str, method: str, token_keys: tuple[str, ...]):
        self.name, self.method, self.token_keys = name, method, token_keys

    def forward_kwargs(self) -> dict[str, Any]:
        return {}

    @contextlib.contextmanager
    def recording(self, model: Any) -> Iterator[None]:
        inner = _inner(model, self.method)
        if not hasattr(inner, self.method):
            raise NpuprecError(f"{type(model).__name__} has no {self.method}; the {self.name} tower's output "
                               "cannot be captured on the reference side")
        seen: dict[str, Any] = {}
        setattr(model, f"_npuprec_{self.name}", seen)

        def wrap(name: str) -> None:
            original = getattr(inner, name)

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                seen[name] = out
                return out

            setattr(inner, name, wrapped)

        def keep_inputs(module: Any, args: tuple, kwargs: dict) -> None:
            seen["inputs"] = dict(kwargs)

        names = [n for n in (self.method, "get_rope_index") if hasattr(inner, n)]
        for name in names:
            wrap(name)
        handle = model.register_forward_pre_hook(keep_inputs, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for name in names:
                delattr(inner, name)  # the class's method again

    def write(self, model: Any, output: Any, keep: Any, path: Path) -> None:
        """embeds_<i> [tokens x hidden] float32, deepstack_<i> [levels x tokens x hidden], offsets [items],
        positions [dims x tokens] int64 (M-RoPE models)."""
        import torch

        seen = getattr(model, f"_npuprec_{self.name}")
        main, deepstack = _per_item(seen.get(self.method))
        ids = seen["inputs"]["input_ids"][0].tolist()
        token = next((getattr(model.config, k) for k in self.token_keys if getattr(model.config, k, None) is not None),
                     None)
        offsets = [i for i, t in enumerate(ids) if t == token and (i == 0 or ids[i - 1] != token)]
        if len(offsets) != len(main):
            raise NpuprecError(f"{type(model).__name__}: {len(main)} item(s) through {self.method}, {len(offsets)} "
                               f"placeholder run(s) in the ids; the {self.name} tap cannot pair them")
        arrays: dict[str, Any] = {"offsets": np.asarray(offsets, dtype=np.int64)}
        for i, (embeds, levels) in enumerate(zip(main, deepstack)):
            arrays[f"embeds_{i}"] = embeds.detach().float().numpy()
            if levels:
                arrays[f"deepstack_{i}"] = torch.stack([x.detach().float() for x in levels]).numpy()
        positions = _positions(model, seen)
        if positions is not None:
            arrays["positions"] = positions
        with atomic_file(path, "wb") as f:
            np.savez(f, **arrays)


def _inner(model: Any, method: str) -> Any:
    """The module that owns the tower method and get_rope_index (Qwen-VL: `model.model`)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, method) else model


def _per_item(features: Any) -> tuple[list[Any], list[list[Any]]]:
    """(main embeddings per item, deepstack levels per item) from the tower method's output: a ModelOutput
    with pooler_output (one tensor per item) and deepstack_features (levels x items), or a list of tensors."""
    if features is None:
        return [], []
    pooled = getattr(features, "pooler_output", None)
    main = list(pooled if pooled is not None else features)
    levels = list(getattr(features, "deepstack_features", None) or [])
    deepstack = [[level[i] for level in levels] for i in range(len(main))] if levels else [[] for _ in main]
    return main, deepstack


def _positions(model: Any, seen: dict[str, Any]) -> Any:
    """[dims x tokens] int64 from get_rope_index, or None for a model without it."""
    import torch

    rope = seen.get("get_rope_index")
    if rope is None:
        inner = _inner(model, "get_rope_index")
        if not hasattr(inner, "get_rope_index"):
            return None
        ids = seen["inputs"]["input_ids"]
        wanted = inspect.signature(type(inner).get_rope_index).parameters
        extra = {"mm_token_type_ids": torch.zeros_like(ids)} if "mm_token_type_ids" in wanted else {}
        rope = inner.get_rope_index(ids, **extra)
    positions = rope[0] if isinstance(rope, tuple) else rope  # (position_ids [dims x 1 x tokens], deltas)
    return positions[:, 0].long().numpy()


VISION = TowerReference("vision", "get_image_features", ("image_token_id", "image_token_index"))
