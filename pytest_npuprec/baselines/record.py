"""The live FP32 reference, wrapped to record a baseline: a forward hook on the model's lm_head keeps the
rows it receives at every scored position; each rebuilt row (lm_head.py) must equal the live logits, or
the model refuses baselines (a post-processing after lm_head this suite does not reproduce)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..measure.routing import TAP as ROUTING_TAP
from ..measure.routing import compact_routes
from ..runners.scoring import ScoreRequest
from . import BaselineError
from .lm_head import checksums, find_key, postprocess_of, read_weight, rebuild

# rebuilt vs live logits, |diff| <= REBUILD_RTOL x max(1, max |live|): the same FP32 matmul as the live
# lm_head; measured 0 (bitwise) on every stand-in
REBUILD_RTOL = 1e-6


# the taps a baseline stores beside the rows (a model whose checks need any other runs its reference live)
STORED_TAPS = frozenset({ROUTING_TAP})


def refuse_taps(model: str, taps: Any) -> str | None:
    """Why a request's taps cannot be recorded or replayed (None: they can)."""
    taps = set(taps) - STORED_TAPS
    if not taps:
        return None
    return (f"{model}: its checks need {', '.join(sorted(taps))} from the reference, which baselines do not store "
            "yet; run it with --npuprec-reference live")


def refuse_media(model: str, media: Any) -> str | None:
    """Why a sequence with images or sounds cannot be recorded or replayed (None: it has none). A baseline keys a
    sequence by its token ids, and two prompts of one text with other media have the same ids."""
    if not any(media):
        return None
    return (f"{model}: its prompts carry images or sounds, and baselines key a sequence by its token ids only (two "
            "prompts of one text with other media would share one recording); run it with --npuprec-reference live")


class RecordingReference:
    """A Runner (capture/session.py): the TransformersRunner it wraps, plus what a baseline needs."""

    side = "reference"

    def __init__(self, inner: Any, model_path: Path, model: str, routing_tie_margin: float | None = None):
        self.inner, self.model_path, self.model = inner, Path(model_path), model
        self.routing_tie_margin = routing_tie_margin  # the compact routing is made for it (provenance.py)
        self.lm_head: dict[str, Any] = {}
        self.generated: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.scored: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[str, Any]] = {}
        self.max_rebuild_diff = 0.0
        self._weight: Any = None
        self._post: dict[str, float] = {}

    @property
    def info(self) -> dict[str, Any]:
        return self.inner.info

    def __enter__(self) -> "RecordingReference":
        import torch

        self.inner.__enter__()
        try:
            key = find_key(self.inner.model, self.model_path)
            weight, digest = read_weight(self.model_path, key)
            self._post = postprocess_of(self.model_path)
            self.lm_head = {"key": key, "sha256": digest, "shape": list(weight.shape),
                            "postprocess": self._post}
            self._weight = torch.from_numpy(weight)
        except BaseException:
            self.inner.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._weight = None
        self.inner.__exit__(*exc)

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, **media: Any) -> list[tuple[int, ...]]:
        refused = refuse_media(self.model, [m for per_prompt in media.get("images") or () for m in per_prompt])
        if refused:
            raise BaselineError(refused)
        out = self.inner.generate(prompts, max_tokens, **media)
        self.generated.update({tuple(p): tuple(g) for p, g in zip(prompts, out, strict=True)})
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> None:
        for request in requests:
            refused = refuse_taps(self.model, request.taps) or refuse_media(self.model, request.images)
            if refused:
                raise BaselineError(refused)
            self._score_one(request)

    def _score_one(self, request: ScoreRequest) -> None:
        tokens, positions, out = request.tokens, request.positions, request.out
        head = self.inner.model.get_output_embeddings()
        seen: list[Any] = []
        hook = head.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
        try:
            self.inner.score([request])
        finally:
            hook.remove()
        if not seen:
            raise BaselineError(f"{self.model}: the reference's lm_head was not called while scoring; cannot record "
                                "a baseline. Run with --npuprec-reference live")
        hidden = seen[-1]
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.shape[0] != len(positions):  # a model that computed every position: keep the scored ones
            rows = rows[list(positions)]
        rows = rows.float().numpy().copy()
        live = np.load(out)
        rebuilt = rebuild(rows, self._weight, self._post)
        scale = max(1.0, float(np.nanmax(np.abs(np.where(np.isfinite(live), live, 0)))))
        same_nonfinite = np.array_equal(~np.isfinite(live), ~np.isfinite(rebuilt))
        diff = float(np.max(np.abs(np.where(np.isfinite(live), rebuilt - live, 0)))) if live.size else 0.0
        if not same_nonfinite or not diff <= REBUILD_RTOL * scale:
            raise BaselineError(
                f"{self.model}: logits rebuilt from the lm_head inputs ({self.lm_head['key']}, post-processing "
                f"{self._post or 'none'}) differ from the live reference's by up to {diff:.3g}: this model "
                "post-processes logits in a way baselines do not reproduce, so it cannot have one. Run it with "
                "--npuprec-reference live")
        self.max_rebuild_diff = max(self.max_rebuild_diff, diff)
        entry: dict[str, Any] = {"rows": rows, "checksums": checksums(live)}
        if ROUTING_TAP in request.taps:
            with np.load(request.taps[ROUTING_TAP]) as tap:
                entry["routing"] = {**compact_routes(tap["router_logits"], int(tap["top_k"]), self.routing_tie_margin),
                                    "layers": tap["layers"], "top_k": tap["top_k"],
                                    "tie_margin": np.float64(np.nan if self.routing_tie_margin is None
                                                             else self.routing_tie_margin)}
        self.scored[(tuple(tokens), tuple(positions))] = entry
