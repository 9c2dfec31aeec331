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

from ..capture.records import ModelCapture, media_digests
from ..capture.session import capture_model
from ..runners.scoring import ScoreRequest

FLOOR_DTYPE = "bfloat16"


class RecordedReference:
    """A capture's reference side as a runner: its greedy continuations and its logits, by token ids and media
    (two prompts of the same text with other images or sounds are two prompts)."""

    side = "reference"

    def __init__(self, capture: ModelCapture, media: dict[int, tuple[Any, ...]] | None = None):
        digests = {p.prompt.index: media_digests((media or {}).get(p.prompt.index, ())) for p in capture.prompts}
        self.generated = {(p.prompt.token_ids, digests[p.prompt.index]): p.generated["reference"]
                          for p in capture.prompts}
        self.logits = {(p.scored, p.positions, digests[p.prompt.index]): p.logits_files["reference"]
                       for p in capture.prompts}
        self.taps = {(p.scored, p.positions, digests[p.prompt.index]):
                     {tap: sides["reference"] for tap, sides in p.tap_files.items() if "reference" in sides}
                     for p in capture.prompts}
        self.info: dict[str, Any] = dict(capture.meta.get("reference") or {}, replayed_from=str(capture.folder))

    def __enter__(self) -> "RecordedReference":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int,
                 images: Sequence[tuple[Any, ...]] | None = None) -> list[tuple[int, ...]]:
        return [self.generated[(tuple(p), media_digests(images[k] if images else ()))] for k, p in enumerate(prompts)]

    def score(self, requests: Sequence[ScoreRequest]) -> None:
        for request in requests:
            key = (tuple(request.tokens), tuple(request.positions), media_digests(request.images))
            shutil.copyfile(self.logits[key], request.out)
            for tap, path in request.taps.items():  # e.g. the FP32 router logits: the floor of routing too
                shutil.copyfile(self.taps[key][tap], path)


def model_path(capture: ModelCapture) -> Path:
    """The checkpoint the device ran (a QAT config's converted one)."""
    return Path(capture.meta.get("converted_path") or capture.meta["model_path"])


def media_of(config: Any, capture: ModelCapture) -> dict[int, tuple[Any, ...]]:
    """prompt index -> its images / sounds, rendered again from the config: a capture on disk holds their sha256
    only, and a floor run without them would compare the placeholders' bare embeddings with the FP32 run."""
    if not any(p.prompt.media_positions for p in capture.prompts):
        return {}
    from ..capture.prompts import load_tokenizer, render_prompts

    path = model_path(capture)
    rendered = render_prompts(config, load_tokenizer(path, config.serve.trust_remote_code), path)
    return {p.index: p.images for p in rendered if p.images}


def capture_floor(capture: ModelCapture, trust_remote_code: bool, folder: Path,
                  taps: Sequence[str] = (), media: dict[int, tuple[Any, ...]] | None = None) -> ModelCapture:
    """transformers BF16 ("device" side) vs the capture's FP32 reference, on the same prompts and positions; a
    prompt with image / audio placeholders needs its `media` (media_of)."""
    import dataclasses

    from ..runners.reference import TransformersRunner

    prompts = [dataclasses.replace(p.prompt, images=(media or {}).get(p.prompt.index, ())) for p in capture.prompts]
    bare = next((p for p in prompts if p.media_positions and len(p.images) == 0), None)
    if bare is not None:
        raise ValueError(f"{capture.model}: prompt {bare.id!r} has media placeholders but no images or sounds were "
                         "given for the floor run")
    return capture_model(
        capture.model, prompts, int(capture.meta["max_tokens"]),
        capture.meta["positions_mode"],
        reference=lambda: RecordedReference(capture, media),
        device=lambda: TransformersRunner(model_path(capture), trust_remote_code, dtype=FLOOR_DTYPE),
        folder=folder, meta={"floor_of": str(capture.folder)}, taps=taps,
    )
