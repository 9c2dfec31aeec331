"""One model's capture: the reference first, then the device, never both resident at once.

The reference (FP32) generates greedy continuations; prompt + reference continuation is the
shared sequence that both sides then score by teacher forcing, so logits stay position-aligned
even after the two sides' own greedy tokens diverge. The device's own greedy continuation is
generated separately for the token checks.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol, Sequence

from ..config.schema import PositionsMode
from .records import CaptureWriter, ModelCapture, PromptCapture, PromptInput


class Runner(Protocol):
    side: str
    info: dict[str, Any]

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[tuple[int, ...]]: ...

    def score(self, tokens: Sequence[int], positions: Sequence[int], out: Path) -> None: ...


RunnerFactory = Callable[[], ContextManager[Runner]]


def scored_positions(prompt_len: int, scored_len: int, mode: PositionsMode) -> tuple[int, ...]:
    """Positions whose next-token logits are compared (position p predicts token p + 1)."""
    start = 0 if mode == "all" else prompt_len - 1
    return tuple(range(start, scored_len - 1))


def capture_model(model: str, prompts: list[PromptInput], max_tokens: int, positions_mode: PositionsMode,
                  reference: RunnerFactory, device: RunnerFactory, folder: Path,
                  meta: dict[str, Any] | None = None) -> ModelCapture:
    writer = CaptureWriter(folder)
    try:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with reference() as ref:
            ref_generated = ref.generate([p.token_ids for p in prompts], max_tokens)
            scored = [p.token_ids + g for p, g in zip(prompts, ref_generated)]
            positions = [scored_positions(len(p.token_ids), len(s), positions_mode) for p, s in zip(prompts, scored)]
            for p, s, pos in zip(prompts, scored, positions):
                ref.score(s, pos, writer.logits_path("reference", p.index))
            ref_info = ref.info
        timings["reference_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        with device() as dev:
            gen_started = time.perf_counter()
            dev_generated = dev.generate([p.token_ids for p in prompts], max_tokens)
            timings["device_generate_s"] = round(time.perf_counter() - gen_started, 3)
            score_started = time.perf_counter()
            for p, s, pos in zip(prompts, scored, positions):
                dev.score(s, pos, writer.logits_path("device", p.index))
            timings["device_score_s"] = round(time.perf_counter() - score_started, 3)
            dev_info = dev.info
        timings["device_s"] = round(time.perf_counter() - started, 2)

        records = [
            PromptCapture(prompt=p, scored=s, positions=pos,
                          generated={"reference": r, "device": d},
                          logits_files={})
            for p, s, pos, r, d in zip(prompts, scored, positions, ref_generated, dev_generated)
        ]
        full_meta = dict(meta or {}, reference=ref_info, device=dev_info, timings=timings,
                         positions_mode=positions_mode, max_tokens=max_tokens)
        return writer.finish(ModelCapture(model=model, prompts=records, meta=full_meta))
    except BaseException:
        writer.abandon()
        raise
