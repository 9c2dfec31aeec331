"""The BF16 noise floor: transformers BF16 against the FP32 reference of a capture already made.

The device run captured the FP32 reference (greedy continuations, teacher-forced logits); the floor replays that
reference instead of loading the FP32 model again (one FP32 run serves both comparisons) and runs the same
checkpoint in transformers BF16 on the CPU as its "device" side: the error BF16 arithmetic alone causes, with no
engine or kernel differences.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from ..capture.records import ModelCapture, PromptInput
from ..capture.session import capture_model
from ..runners.scoring import ScoreRequest

FLOOR_DTYPE = "bfloat16"


class RecordedReference:
    """A capture's reference side as a runner: its greedy continuations and its logits, by token ids."""

    side = "reference"

    def __init__(self, capture: ModelCapture, prompts: Sequence[PromptInput] | None = None):
        # keyed by token ids and the images' digests: two prompts of the same text with other images (whose ids
        # are the same) are two entries; `prompts`: the inputs with their images (a capture read back has none)
        digests = {p.index: p.image_digests for p in prompts or ()}
        keys = [(p.scored, p.positions, digests.get(p.prompt.index, ())) for p in capture.prompts]
        self.generated = {(p.prompt.token_ids, k[2]): p.generated["reference"] for p, k in zip(capture.prompts, keys)}
        self.logits = {k: p.logits_files["reference"] for p, k in zip(capture.prompts, keys)}
        self.taps = {k: {tap: sides["reference"] for tap, sides in p.tap_files.items() if "reference" in sides}
                     for p, k in zip(capture.prompts, keys)}
        self.info: dict[str, Any] = dict(capture.meta.get("reference") or {}, replayed_from=str(capture.folder))

    def __enter__(self) -> "RecordedReference":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int,
                 images: Sequence[tuple[Any, ...]] | None = None) -> list[tuple[int, ...]]:
        return [self.generated[(tuple(p), _digests(images[k] if images else ()))] for k, p in enumerate(prompts)]

    def score(self, requests: Sequence[ScoreRequest]) -> None:
        for request in requests:
            key = (tuple(request.tokens), tuple(request.positions), _digests(request.images))
            shutil.copyfile(self.logits[key], request.out)
            for tap, path in request.taps.items():  # e.g. the FP32 router logits: the floor of routing too
                shutil.copyfile(self.taps[key][tap], path)


def _digests(images: Sequence[Any]) -> tuple[str, ...]:
    return PromptInput(index=0, id="", label="", token_ids=(), images=tuple(images)).image_digests


def model_path(capture: ModelCapture) -> Path:
    """The checkpoint the device ran (a QAT config's converted one)."""
    return Path(capture.meta.get("converted_path") or capture.meta["model_path"])


def capture_floor(capture: ModelCapture, trust_remote_code: bool, folder: Path,
                  taps: Sequence[str] = (), prompts: Sequence[PromptInput] | None = None) -> ModelCapture:
    """transformers BF16 ("device" side) vs the capture's FP32 reference, on the same prompts and positions.
    `prompts`: the inputs the capture ran, with their images (a capture read back from disk has none)."""
    from ..runners.reference import TransformersRunner

    return capture_model(
        capture.model, list(prompts) if prompts is not None else [p.prompt for p in capture.prompts],
        int(capture.meta["max_tokens"]),
        capture.meta["positions_mode"],
        reference=lambda: RecordedReference(capture, prompts),
        device=lambda: TransformersRunner(model_path(capture), trust_remote_code, dtype=FLOOR_DTYPE),
        folder=folder, meta={"floor_of": str(capture.folder)}, taps=taps,
    )
