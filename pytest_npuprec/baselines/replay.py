"""The reference replayed from a baseline: a Runner (capture/session.py) that loads no transformers model.

generate() returns the recorded greedy continuations; score() rebuilds the logits of the recorded rows
(lm_head.py) and checks them against the recorded checksums before writing them, as the live reference
would have written them; a routing tap gets the recorded compact routing (measure/routing.py reads it as it
reads a live one)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_file
from ..measure.routing import TAP as ROUTING_TAP
from ..runners.scoring import ScoreRequest
from . import BaselineError, update_command
from .lm_head import checksum_mismatch, rebuild
from .record import refuse_media, refuse_taps
from .store import ReferenceBaseline


class BaselineReference:
    side = "reference"

    def __init__(self, baseline: ReferenceBaseline, weight: np.ndarray, model: str):
        self.baseline, self.model = baseline, model
        self._weight_np = weight
        self._weight: Any = None
        self.info: dict[str, Any] = {}
        self._by_prompt = {p.scored[: len(p.scored) - len(p.generated)]: p for p in baseline.prompts
                           if p.kind in ("compare", "prefix_cache")}
        self._by_scored = {(p.scored, p.positions): p for p in baseline.prompts}

    def __enter__(self) -> "BaselineReference":
        import torch

        started = time.perf_counter()
        self._weight = torch.from_numpy(self._weight_np)
        recorded = self.baseline.recorded
        self.info = {"platform": "cpu", "dtype": "float32", "source": "baseline", "baseline": str(self.baseline.folder),
                     "recorded": recorded.get("created"),
                     "model_class": recorded.get("reference", {}).get("model_class"),
                     "threads": torch.get_num_threads(), "start_s": round(time.perf_counter() - started, 2)}
        return self

    def __exit__(self, *exc: object) -> None:
        self._weight = self._weight_np = None  # 1.6 GB at 151,936 x 2,560: freed before the device starts

    def _stale(self, what: str) -> BaselineError:
        return BaselineError(f"{self.model}: {self.baseline.folder}: {what}; record it again: "
                             f"{update_command(self.model)}")

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, **media: Any) -> list[tuple[int, ...]]:
        refused = refuse_media(self.model, [m for per_prompt in media.get("images") or () for m in per_prompt])
        if refused:
            raise BaselineError(refused)
        if max_tokens != self.baseline.max_tokens:
            raise self._stale(f"recorded with max_tokens {self.baseline.max_tokens}, asked for {max_tokens}")
        out = []
        for prompt in prompts:
            found = self._by_prompt.get(tuple(prompt))
            if found is None:
                raise self._stale(f"no recorded continuation for a prompt of {len(prompt)} tokens")
            out.append(found.generated)
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> None:
        for request in requests:
            refused = refuse_taps(self.model, request.taps) or refuse_media(self.model, request.images)
            if refused:
                raise BaselineError(refused)
            self._score_one(request.tokens, request.positions, request.out)
            if ROUTING_TAP in request.taps:
                self._routing(self._found(request.tokens, request.positions), request.taps[ROUTING_TAP])

    def _found(self, tokens: Sequence[int], positions: Sequence[int]) -> Any:
        found = self._by_scored.get((tuple(tokens), tuple(positions)))
        if found is None:
            raise self._stale(f"no recorded rows for a sequence of {len(tokens)} tokens at {len(positions)} positions")
        return found

    def _routing(self, found: Any, path: Path) -> None:
        if found.routing_file is None:
            raise self._stale(f"prompt {found.id}: recorded without its routing (no routing check was configured "
                              "then)")
        with open(found.routing_file, "rb") as src, atomic_file(path, "wb") as dst:
            shutil.copyfileobj(src, dst)

    def _score_one(self, tokens: Sequence[int], positions: Sequence[int], out: Path) -> None:
        found = self._found(tokens, positions)
        logits = rebuild(np.asarray(found.rows()), self._weight, self.baseline.lm_head["postprocess"])
        mismatch = checksum_mismatch(logits, found.checksums)
        if mismatch:
            raise BaselineError(f"{self.model}: {self.baseline.folder}: prompt {found.id}: the rebuilt logits do not "
                                f"match the recorded checksums ({mismatch}); run with --npuprec-reference live, or "
                                f"record the baseline again: {update_command(self.model)}")
        np.save(out, logits)
