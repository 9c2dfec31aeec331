"""Vision tap (worker side): per image, the embeddings that entered the language model, and the multi-dimensional
(M-RoPE) positions the model ran each token of the scored sequence with.

Embeddings: vLLM V1 runs the tower (with its patch merger) once per image before the forward pass and keeps the
output in the model runner's `encoder_cache[mm_hash]`; the forward pass gathers the placeholder rows from there.
The tap copies each scored request's cached outputs during its pass (the request's `mm_features` name them, in
prompt order), so what is compared is exactly what the language model read, whatever tower kernels, graphs or
faults (runners/faults/vision.py) produced it. Qwen3-VL's entries hold the main embeddings and the deepstack
features side by side ([tokens x hidden x (1 + levels)]: `model.visual_dim` splits them).

Positions: the rotary positions entering the model's forward ([3 x tokens] under M-RoPE), after any pre-hook,
taken per request by token index from the capture hook's segments (`see`, vllm_worker.py).

Generic over towers: TOWERS maps a tap name to the vLLM modality whose encoder outputs it keeps (an audio tower
is one more entry).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...atomic import atomic_file
from ..scoring import SCORE_KEY

TOWERS = {"vision": "image"}  # tap name -> vLLM modality of the encoder outputs it keeps


def scored_requests(runner: Any) -> dict[int, Any]:
    """scoring request key -> the runner's request state (CachedRequestState) of it."""
    out = {}
    for state in (getattr(runner, "requests", None) or {}).values():
        key = (getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}).get(SCORE_KEY)
        if key is not None:
            out[int(key)] = state
    return out


class TowerTap:
    def __init__(self, model: Any, name: str, modality: str):
        self.model, self.name, self.modality = model, name, modality
        self.split = int(getattr(model, "visual_dim", 0) or 0)  # width of the main embeddings (Qwen3-VL deepstack)
        self.armed = False
        self.embeds: dict[tuple[int, int], Any] = {}  # (request, item of the modality) -> float32 tensor
        self.offsets: dict[tuple[int, int], int] = {}  # -> token index of the item's first placeholder
        self.expected: dict[int, list[tuple[int, int]]] = {}  # request -> [(offset, length)] of its items
        self.rotary: dict[int, dict[int, Any]] = {}  # request -> token index -> rotary position (tensor)

    def start_pass(self) -> None:
        pass

    def see(self, segments: list[tuple[int, int, int]], token_index: Any, args: tuple, kwargs: dict) -> None:
        """Called by the capture hook once per forward pass while armed: (request, first row, end) of each scoring
        request in the pass, each row's token index, and the forward's arguments (the positions it ran with)."""
        runner = self.model._npuprec_steps.runner
        states = scored_requests(runner)
        cache = getattr(runner, "encoder_cache", None) or {}
        for key, _, _ in segments:
            items = [f for f in getattr(states.get(key), "mm_features", None) or () if f.modality == self.modality]
            self.expected[key] = [(int(f.mm_position.offset), int(f.mm_position.length)) for f in items]
            for i, feature in enumerate(items):
                out = cache.get(feature.identifier)
                if (key, i) not in self.embeds and out is not None:
                    self.embeds[(key, i)] = out.detach().float().cpu().clone()
                    self.offsets[(key, i)] = int(feature.mm_position.offset)
        rotary = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if rotary is None or not hasattr(rotary, "dim") or rotary.dim() != 2:
            return  # one position per token: nothing beyond the token index to compare
        rotary = rotary.detach().cpu()
        index = [int(i) for i in token_index.tolist()]
        for key, start, end in segments:
            seen = self.rotary.setdefault(key, {})
            for row in range(start, min(end, len(index))):
                seen.setdefault(index[row], rotary[..., row].clone())

    def take(self, rows: Any, keys: list[int], positions: list[int]) -> str | None:
        """A problem when an item placed before a scored position of this pass left no encoder output to copy."""
        last: dict[int, int] = {}
        for key, position in zip(keys, positions):
            last[key] = max(last.get(key, -1), position)
        for key, position in last.items():
            for i, (offset, length) in enumerate(self.expected.get(key, ())):
                if offset + length <= position and (key, i) not in self.embeds:
                    return (f"{self.name}: the encoder output of {self.modality} {i} of scoring request {key} was not "
                            "in the model runner's encoder_cache during its forward pass; the tower's output cannot "
                            "be captured on this runner")
        return None

    def reset(self) -> None:
        self.armed = True
        self.embeds, self.offsets, self.expected, self.rotary = {}, {}, {}, {}

    def write(self, key: int, positions: list[int], path: str) -> None:
        """embeds_<i> float32 [tokens x hidden] per item in prompt order, deepstack_<i> [levels x tokens x hidden]
        when the model has deepstack features, offsets int64 [items]; positions int64 [dims x tokens] for token
        indices 0 .. n-1 (those the device ran in one piece from the first token), under M-RoPE only."""
        arrays: dict[str, Any] = {}
        items = sorted(i for k, i in self.embeds if k == key)
        for i in items:
            out = self.embeds[(key, i)]
            if self.split and out.shape[-1] > self.split and out.shape[-1] % self.split == 0:
                arrays[f"embeds_{i}"] = out[:, : self.split].numpy()
                arrays[f"deepstack_{i}"] = out[:, self.split:].reshape(out.shape[0], -1, self.split) \
                    .transpose(0, 1).numpy()
            else:
                arrays[f"embeds_{i}"] = out.numpy()
        arrays["offsets"] = np.asarray([self.offsets[(key, i)] for i in items], dtype=np.int64)
        seen = self.rotary.get(key, {})
        n = 0
        while n in seen:
            n += 1
        if n:
            import torch

            arrays["positions"] = torch.stack([seen[t] for t in range(n)], -1).numpy().astype(np.int64)
        with atomic_file(path, "wb") as f:
            np.savez(f, **arrays)


def installer(name: str, modality: str) -> Any:
    def install(model: Any) -> TowerTap | None:
        # vLLM's SupportsMultiModal models encode their items through embed_multimodal
        return TowerTap(model, name, modality) if callable(getattr(model, "embed_multimodal", None)) else None

    return install
