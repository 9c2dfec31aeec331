"""One model's capture: the reference and the device one after the other, never both resident at once.

By default (reference_scoring "reference") the reference (FP32) goes first and generates greedy continuations;
prompt + reference continuation is the shared sequence that both sides then score by teacher forcing, so logits
stay position-aligned even after the two sides' own greedy tokens diverge. The device's own greedy continuation
is generated separately for the token checks. With reference_scoring "device" the device goes first and its
own continuation is the shared sequence: the reference generates nothing (capture/teacher_forced.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol, Sequence

from ..config.schema import PositionsMode, ReferenceScoring
from ..runners.scoring import ScoreRequest
from .layouts import layout_pass
from .prefix_cache import WARM, warm_pass
from .records import CaptureWriter, ModelCapture, PromptCapture, PromptInput, outputs_by_prompt, repeat_side
from .steps import batch_passes as step_batch_passes
from .steps import generate_with_steps
from .teacher_forced import reference_argmax, scored_positions, scored_sequences

__all__ = ["RunnerFactory", "capture_model", "scored_positions"]


class Runner(Protocol):
    side: str
    info: dict[str, Any]

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, logits_out: Sequence[Path] | None = None,
                 images: Sequence[tuple[Any, ...]] | None = None) -> list[tuple[int, ...]]: ...

    def score(self, requests: Sequence[ScoreRequest]) -> None: ...


RunnerFactory = Callable[[], ContextManager[Runner]]


def images_of(prompts: Sequence[PromptInput]) -> dict[str, Any]:
    """generate()'s `images` keyword for prompts that have any (none at all: text-only runners stay untouched)."""
    return {"images": [p.images for p in prompts]} if any(p.images for p in prompts) else {}


def capture_model(model: str, prompts: list[PromptInput], max_tokens: int, positions_mode: PositionsMode,
                  reference: RunnerFactory, device: RunnerFactory, folder: Path,
                  meta: dict[str, Any] | None = None, device_runs: int = 1, steps: bool = False,
                  batch_passes: bool = False, variants: dict[str, RunnerFactory] | None = None,
                  reference_scoring: ReferenceScoring = "reference", taps: Sequence[str] = (),
                  layouts: dict[str, RunnerFactory] | None = None) -> ModelCapture:
    """Capture both sides. Perplexity prompts are scored at every position and not generated from;
    with device_runs > 1 the device generates and scores everything again (determinism check).
    `steps`: the device's generation also writes the logits of each of its steps (capture/steps.py);
    `batch_passes`: each prompt alone and the batch reversed too; `variants`: more device engines
    (name -> factory, e.g. enforce_eager flipped), each started after the last closed, generating with steps.
    `reference_scoring`: whose greedy continuation both sides score (module docstring); `taps`: arrays captured
    beside the logits of the compared prompts' scoring, both sides (e.g. "routing"); `layouts`: device engines of other
    parallel layouts (side -> factory), each generating with steps and scoring the compared prompts with the taps
    (capture/layouts.py)."""
    writer = CaptureWriter(folder)
    compare = [p for p in prompts if p.kind == "compare"]
    prefixed = [p for p in prompts if p.kind == "prefix_cache"]  # the reference generates these too
    device_first = reference_scoring == "device"
    if device_first and prefixed:
        raise ValueError("prefix_cache prompts are scored on the reference's continuation; they cannot run with "
                         "reference_scoring: device")
    try:
        timings: dict[str, float] = {}
        generated: dict[str, dict[int, tuple[int, ...]]] = {}
        scored: dict[int, tuple[int, ...]] = {}
        positions: dict[int, tuple[int, ...]] = {}

        def share(continuations: dict[int, tuple[int, ...]]) -> None:
            """The sequences both sides score: prompt + these continuations."""
            tokens, rows = scored_sequences(prompts, continuations, positions_mode)
            scored.update(tokens)
            positions.update(rows)

        def requests(side: str) -> list[ScoreRequest]:
            return [ScoreRequest(scored[p.index], positions[p.index], writer.logits_path(side, p.index),
                                 taps={tap: writer.tap_path(side, tap, p.index) for tap in taps}
                                 if p.kind == "compare" else {}, images=p.images)
                    for p in prompts]

        def run_reference() -> dict[str, Any]:
            started = time.perf_counter()
            with reference() as ref:
                if not device_first:
                    generated["reference"] = outputs_by_prompt(
                        compare + prefixed, ref.generate([p.token_ids for p in compare + prefixed], max_tokens,
                                                         **images_of(compare + prefixed)),
                        "the reference generation")
                    share(generated["reference"])
                ref.score(requests("reference"))
                info = ref.info
            if device_first:
                generated["reference"] = reference_argmax(compare, positions,
                                                          lambda i: writer.logits_path("reference", i))
            timings["reference_s"] = round(time.perf_counter() - started, 2)
            return info

        ref_info = {} if device_first else run_reference()
        started = time.perf_counter()
        with device() as dev:
            for run in range(1, device_runs + 1):
                side = repeat_side(run)
                gen_started = time.perf_counter()
                if run == 1 and steps:
                    generated[side] = generate_with_steps(dev, compare, max_tokens, side, writer.logits_path)
                else:
                    generated[side] = outputs_by_prompt(compare, dev.generate([p.token_ids for p in compare],
                                                                              max_tokens, **images_of(compare)),
                                                        f"the {side} generation")
                if run == 1 and device_first:
                    share(generated["device"])
                score_started = time.perf_counter()
                dev.score(requests(side))
                if run == 1:
                    timings["device_generate_s"] = round(score_started - gen_started, 3)
                    timings["device_score_s"] = round(time.perf_counter() - score_started, 3)
            if batch_passes:
                generated.update(step_batch_passes(dev, compare, max_tokens, writer.logits_path))
            if prefixed:
                warm_started = time.perf_counter()
                prefix_meta = warm_pass(dev, prefixed, [ScoreRequest(scored[p.index], positions[p.index],
                                                                     writer.logits_path(WARM, p.index),
                                                                     images=p.images)
                                                        for p in prefixed])
                timings["device_prefix_cache_s"] = round(time.perf_counter() - warm_started, 3)
            dev_info = dev.info
        timings["device_s"] = round(time.perf_counter() - started, 2)
        variant_info = {}
        for name, factory in (variants or {}).items():
            with factory() as dev:
                generated[name] = generate_with_steps(dev, compare, max_tokens, name, writer.logits_path)
                variant_info[name] = dev.info
        for name, factory in (layouts or {}).items():
            with factory() as dev:
                generated[name] = layout_pass(dev, compare, max_tokens, name, writer.logits_path,
                                              [r for p, r in zip(prompts, requests(name)) if p.kind == "compare"])
                variant_info[name] = dev.info
        if device_first:  # after every device engine has closed
            ref_info = run_reference()

        records = [
            PromptCapture(prompt=p, scored=scored[p.index], positions=positions[p.index],
                          generated={side: by_index[p.index] if _generated_on(side, p) else ()
                                     for side, by_index in generated.items()},
                          logits_files={})
            for p in prompts
        ]
        full_meta = dict(meta or {}, reference=ref_info, device=dev_info, **({"variants": variant_info} if variant_info
                                                                                else {}),
                         **({"prefix_cache": prefix_meta} if prefixed else {}), timings=timings,
                         positions_mode=positions_mode, max_tokens=max_tokens, device_runs=device_runs,
                         reference_scoring=reference_scoring, **_image_meta(prompts))
        return writer.finish(ModelCapture(model=model, prompts=records, meta=full_meta))
    except BaseException:
        writer.abandon()
        raise


def _generated_on(side: str, prompt: PromptInput) -> bool:
    """Every side generates the compared prompts; the prefix-cache prompts only the reference (the device's are
    scored, warm and cold, on the reference's continuation); a perplexity text nobody."""
    return prompt.kind == "compare" or (prompt.kind == "prefix_cache" and side == "reference")


def _image_meta(prompts: Sequence[PromptInput]) -> dict[str, Any]:
    """For prompts with images (sounds): how many image (audio) placeholder tokens each has, none of whose rows is
    compared: `image_tokens` / `audio_tokens`."""
    meta = {}
    for modality in ("image", "audio", "media"):
        counts = {p.id: len(p.media_positions) for p in prompts if p.media_positions and p.modality == modality}
        if counts:
            meta[f"{modality}_tokens"] = {
                "per_prompt": counts, "compared": False,
                "note": f"rows at and predicting {modality} placeholder tokens are not compared (text positions "
                        "only); both sides' expansions were checked to be the same ids"}
    return meta
