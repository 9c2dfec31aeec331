"""The prefix_cache check's values: the warm logits (prefix read from the cache) against the cold ones and
against the reference (capture/prefix_cache.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..capture.prefix_cache import WARM
from ..capture.records import ModelCapture
from .thresholds import Measurements, measure


@dataclass(frozen=True)
class PrefixCacheMeasurement:
    prefix_tokens: int  # the shared prefix the cache was primed with
    cached_tokens: dict[str, int]  # prompt id -> prompt tokens the warm request read from the cache
    rows: int  # warm rows compared
    max_abs_diff: float  # warm vs cold, over every row; NaN if a logit is not finite
    worst_prompt: str | None
    worst_position: int | None
    against_reference: Measurements  # warm (as the device side) vs reference, per position


def measure_prefix_cache(capture: ModelCapture, tie_margin: float | None) -> PrefixCacheMeasurement:
    records = capture.prefix_cache()
    worst, where, rows, nonfinite = 0.0, (None, None), 0, None
    for record in records:
        cold, warm = np.asarray(record.logits("device")), np.asarray(record.logits(WARM))
        rows += len(warm)
        if not (np.isfinite(cold).all() and np.isfinite(warm).all()):
            nonfinite = nonfinite or (record.prompt.id, None)
            continue
        if not warm.size:
            continue
        diff = np.abs(warm.astype(np.float64) - cold)
        row, column = np.unravel_index(np.argmax(diff), diff.shape)
        if diff[row, column] > worst or where[0] is None:
            worst, where = float(diff[row, column]), (record.prompt.id, record.positions[int(row)])
    if nonfinite:  # NaN never agrees
        worst, where = float("nan"), nonfinite
    # the warm rows in the device's place: the per-position metrics against the reference, as for any prompt (the
    # device generated nothing for these prompts; the reference's tokens stand in, and token checks are not judged)
    # (numbered from 0: Measurements.prompt(i) is the i-th prompt of its view)
    warm_view = dataclasses.replace(capture, prompts=[
        dataclasses.replace(r, prompt=dataclasses.replace(r.prompt, kind="compare", index=i),
                            generated={"reference": r.generated["reference"], "device": r.generated["reference"]},
                            logits_files={"reference": r.logits_files["reference"], "device": r.logits_files[WARM]})
        for i, r in enumerate(records)])
    meta = capture.meta.get("prefix_cache", {})
    return PrefixCacheMeasurement(int(meta.get("prefix_tokens", 0)), dict(meta.get("cached_tokens", {})), rows, worst,
                                  *where, against_reference=measure(warm_view, tie_margin))
