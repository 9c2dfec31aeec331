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
from ..runners.scoring import ScoreRequest
from .records import CaptureWriter, ModelCapture, PromptCapture, PromptInput, repeat_side
from .steps import batch_passes as step_batch_passes
from .steps import generate_with_steps


class Runner(Protocol):
    side: str
    info: dict[str, Any]

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int,
                 logits_out: Sequence[Path] | None = None) -> list[tuple[int, ...]]: ...

    def score(self, requests: Sequence[ScoreRequest]) -> None: ...


RunnerFactory = Callable[[], ContextManager[Runner]]


def scored_positions(prompt_len: int, scored_len: int, mode: PositionsMode) -> tuple[int, ...]:
    """Positions whose next-token logits are compared (position p predicts token p + 1)."""
    start = 0 if mode == "all" else prompt_len - 1
    return tuple(range(start, scored_len - 1))


def capture_model(model: str, prompts: list[PromptInput], max_tokens: int, positions_mode: PositionsMode,
                  reference: RunnerFactory, device: RunnerFactory, folder: Path,
                  meta: dict[str, Any] | None = None, device_runs: int = 1, steps: bool = False,
                  batch_passes: bool = False, variants: dict[str, RunnerFactory] | None = None,
                  taps: Sequence[str] = ()) -> ModelCapture:
    """Capture both sides. Perplexity prompts are scored at every position and not generated from;
    with device_runs > 1 the device generates and scores everything again (determinism check).
    `steps`: the device's generation also writes the logits of each of its steps (capture/steps.py);
    `batch_passes`: each prompt alone and the batch reversed too; `variants`: more device engines
    (name -> factory, e.g. enforce_eager flipped), each started after the last closed, generating with steps;
    `taps`: arrays captured beside the logits of the compared prompts' scoring, both sides (e.g. "routing")."""
    writer = CaptureWriter(folder)
    compare = [p for p in prompts if p.kind == "compare"]
    try:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with reference() as ref:
            generated = {"reference": dict(zip((p.index for p in compare),
                                               ref.generate([p.token_ids for p in compare], max_tokens)))}
            scored, positions = {}, {}
            for p in prompts:
                continuation = generated["reference"].get(p.index, ())
                scored[p.index] = p.token_ids + continuation
                mode = positions_mode if p.kind == "compare" else "all"
                positions[p.index] = scored_positions(len(p.token_ids), len(scored[p.index]), mode)

            def requests(side: str) -> list[ScoreRequest]:
                return [ScoreRequest(scored[p.index], positions[p.index], writer.logits_path(side, p.index),
                                     {tap: writer.tap_path(side, tap, p.index) for tap in taps}
                                     if p.kind == "compare" else {})
                        for p in prompts]

            ref.score(requests("reference"))
            ref_info = ref.info
        timings["reference_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        with device() as dev:
            for run in range(1, device_runs + 1):
                side = repeat_side(run)
                gen_started = time.perf_counter()
                if run == 1 and steps:
                    generated[side] = generate_with_steps(dev, compare, max_tokens, side, writer.logits_path)
                else:
                    generated[side] = dict(zip((p.index for p in compare),
                                               dev.generate([p.token_ids for p in compare], max_tokens)))
                score_started = time.perf_counter()
                dev.score(requests(side))
                if run == 1:
                    timings["device_generate_s"] = round(score_started - gen_started, 3)
                    timings["device_score_s"] = round(time.perf_counter() - score_started, 3)
            if batch_passes:
                generated.update(step_batch_passes(dev, compare, max_tokens, writer.logits_path))
            dev_info = dev.info
        timings["device_s"] = round(time.perf_counter() - started, 2)
        variant_info = {}
        for name, factory in (variants or {}).items():
            with factory() as dev:
                generated[name] = generate_with_steps(dev, compare, max_tokens, name, writer.logits_path)
                variant_info[name] = dev.info

        records = [
            PromptCapture(prompt=p, scored=scored[p.index], positions=positions[p.index],
                          generated={side: by_index.get(p.index, ()) for side, by_index in generated.items()},
                          logits_files={})
            for p in prompts
        ]
        full_meta = dict(meta or {}, reference=ref_info, device=dev_info, **({"variants": variant_info} if variants
                                                                                else {}), timings=timings,
                         positions_mode=positions_mode, max_tokens=max_tokens, device_runs=device_runs)
        return writer.finish(ModelCapture(model=model, prompts=records, meta=full_meta))
    except BaseException:
        writer.abandon()
        raise
