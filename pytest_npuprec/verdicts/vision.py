"""Vision thresholds (vision_cosine, vision_relative_l2, vision_max_abs_diff, mrope_mismatches) vs the vision
measurement (measure/vision.py). A failure says that the *vision* side moved and names the prompt, the image and
its worst value (or the first position whose M-RoPE position differs); `language_note` words what a failing
logit check says beside a clean tower: the *language* side moved."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..config.schema import Threshold
from ..measure.thresholds import Measurements
from ..measure.vision import VisionMeasurement
from ..metrics.registry import METRICS
from .verdict import Verdict, clip, verdict

_REDUCE = {"mean": np.mean, "min": np.min, "max": np.max}


def _what(t: Threshold, value: str) -> str:
    return f"{t.metric} {t.reduce} = {value}, threshold {t.op} {t.value:g}"


def _prompt(measured: Measurements, index: int) -> tuple[str, str]:
    p = measured.prompt(index)
    return p.id, p.label


def judge_vision(t: Threshold, vision: VisionMeasurement | None, measured: Measurements) -> Verdict:
    common = dict(check_id=t.id, threshold=t, value_of=f"{t.reduce} {t.metric}")
    if t.metric == "mrope_mismatches":
        return _positions(t, vision, measured, common)
    if vision is None or not vision.images:
        return verdict(**common, what=_what(t, "(no values)"), passed=False, value=None,
                       skipped="not compared: no compared prompt has an image")
    if vision.invalid:
        bad = vision.invalid[0]
        pid, label = _prompt(measured, bad.prompt)
        return verdict(**common, what=_what(t, "nan"), passed=False, value=float("nan"),
                       n_values=len(vision.images), n_failing=len(vision.invalid),
                       worst={"prompt_index": bad.prompt, "prompt_id": pid, "prompt": label, "image": bad.image,
                              "value": None},
                       details=[f"the vision side cannot be compared: {len(vision.invalid)} of {len(vision.images)} "
                                f"images invalid; first: prompt {pid} ({clip(label)!r}) image {bad.image}: "
                                f"{bad.invalid}; NaN cannot pass"])
    per_image = vision.values(t.metric)
    value = float(_REDUCE[t.reduce](per_image))
    better_high = METRICS[t.metric].better == "higher"
    k = int(np.argmin(per_image) if better_high else np.argmax(per_image))
    worst_image = vision.images[k]
    pid, label = _prompt(measured, worst_image.prompt)
    failing = int(np.count_nonzero(~t.holds(per_image)))
    passed = bool(t.holds(value))
    worst = {"prompt_index": worst_image.prompt, "prompt_id": pid, "prompt": label, "image": worst_image.image,
             "part": worst_image.worst_part[t.metric], "tokens": worst_image.tokens,
             "value": float(per_image[k])}
    where = (f"prompt {pid} ({clip(label)!r}) image {worst_image.image} ({worst_image.worst_part[t.metric]}, "
             f"{worst_image.tokens} tokens): {t.metric} {per_image[k]:.6g}")
    details = ([f"the vision side moved: the image embeddings entering the language model differ beyond the bound "
                f"in {failing} of {len(per_image)} images", f"worst: {where}"] if not passed
               else [f"{len(per_image)} images; worst: {where}"])
    return verdict(**common, what=_what(t, f"{value:.6g}"), passed=passed, value=value, worst=worst,
                   n_values=len(per_image), n_failing=failing, details=details)


def _positions(t: Threshold, vision: VisionMeasurement | None, measured: Measurements, common: dict) -> Verdict:
    if vision is not None and vision.problems:
        return verdict(**common, what=_what(t, "nan"), passed=False, value=float("nan"),
                       n_values=len(vision.positions) + len(vision.problems), n_failing=len(vision.problems),
                       details=[f"the vision side cannot be compared: {vision.problems[0]}; NaN cannot pass"])
    if vision is None or not vision.positions:
        return verdict(**common, what=_what(t, "(no values)"), passed=False, value=None,
                       skipped="not compared: no multi-dimensional positions were captured (the model does not use "
                               "M-RoPE)")
    per_prompt = vision.values(t.metric)
    value = float(_REDUCE[t.reduce](per_prompt))
    failing = [p for p in vision.positions if not t.holds(float(p.differing))]
    tokens = sum(p.tokens for p in vision.positions)
    if not failing:
        return verdict(**common, what=_what(t, f"{value:g}"), passed=bool(t.holds(value)), value=value,
                       n_values=len(per_prompt),
                       details=[f"{tokens} positions of {len(per_prompt)} prompts compared exactly"])
    first = failing[0]
    pid, label = _prompt(measured, first.prompt)
    worst = {"prompt_index": first.prompt, "prompt_id": pid, "prompt": label, "position": first.first,
             "value": float(first.differing), "device": list(first.device), "reference": list(first.reference)}
    return verdict(**common, what=_what(t, f"{value:g}"), passed=bool(t.holds(value)), value=value, worst=worst,
                   n_values=len(per_prompt), n_failing=len(failing),
                   details=[f"the vision side moved: the M-RoPE positions differ from the reference's in "
                            f"{len(failing)} of {len(per_prompt)} prompts",
                            f"first: prompt {pid} ({clip(label)!r}) position {first.first}: device "
                            f"{list(first.device)}, reference {list(first.reference)} ({first.differing} of "
                            f"{first.tokens} positions differ)"])


def language_note(verdicts: dict[str, Verdict], vision_ids: list[str]) -> str | None:
    """What a failing logit check adds when the vision checks ran: the language side moved (the tower and the
    positions agree within their bounds), or the vision side moved too (naming the failing vision checks)."""
    judged = [verdicts[i] for i in vision_ids if i in verdicts and verdicts[i].skipped is None]
    if not judged:
        return None
    failed = [v.check_id for v in judged if v.failed]
    if failed:
        return f"the vision side moved too ({', '.join(failed)} failed)"
    return ("the language side moved: the image embeddings and M-RoPE positions agree with the reference within "
            f"their bounds ({', '.join(v.check_id for v in judged)} passed)")


def with_note(v: Verdict, note: str) -> Verdict:
    import dataclasses

    return dataclasses.replace(v, message=f"{v.message}; {note}")
