"""Metric threshold vs measured value (and the all-finite check).

Messages follow torch.testing's style: what was compared, how many values miss the bound,
the worst value and where it is (prompt and position).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..config.schema import FINITE_CHECK, Threshold
from ..measure.thresholds import Cells, Measurements
from ..metrics.registry import METRICS
from .verdict import Verdict, clip



def _where(m: Measurements, prompt: int, position: int) -> dict[str, Any]:
    p = m.prompt(prompt)
    return {"prompt_index": prompt, "prompt_id": p.id, "prompt": p.label, "position": position}


def _where_text(w: dict[str, Any]) -> str:
    return f"prompt {w['prompt_id']} ({clip(w['prompt'])!r}) position {w['position']}"


def judge(m: Measurements, threshold: Threshold) -> Verdict:
    spec = METRICS[threshold.metric]
    cells: Cells | None = m.cells.get(threshold.metric)
    if cells is None or len(cells.values) == 0:
        return Verdict(m.model, threshold.id, False, None, threshold,
                       f"{m.model}: {threshold.metric}: no values were measured (no scored positions)")
    values = cells.values
    n = len(values)
    nan = np.isnan(values)
    if nan.any():
        first = int(np.flatnonzero(nan)[0])
        where = _where(m, int(cells.prompt[first]), int(cells.position[first]))
        return Verdict(m.model, threshold.id, False, float("nan"), threshold,
                       f"{m.model}: {threshold.metric}: {int(nan.sum())} of {n} values are NaN because the "
                       f"logits are not finite (first at {_where_text(where)}); "
                       f"threshold {threshold.describe()} cannot pass", where, n, int(nan.sum()))
    value = cells.reduce(threshold.reduce)
    lower_is_worse = spec.better == "higher"
    worst_i = int(np.argmin(values) if lower_is_worse else np.argmax(values))
    worst = dict(_where(m, int(cells.prompt[worst_i]), int(cells.position[worst_i])),
                 value=float(values[worst_i]))
    failing = values < threshold.value if threshold.bound == "min" else values > threshold.value
    passed = value >= threshold.value if threshold.bound == "min" else value <= threshold.value
    scope = "prompts" if spec.per == "prompt" else "values (prompt x position)"
    op = ">=" if threshold.bound == "min" else "<="
    message = (
        f"{m.model}: {threshold.metric} {threshold.reduce} = {value:.6g}, threshold {op} {threshold.value:g}: "
        f"{'passed' if passed else 'FAILED'}. {int(failing.sum())} of {n} {scope} miss the bound; "
        f"worst {worst['value']:.6g} at {_where_text(worst)}"
    )
    return Verdict(m.model, threshold.id, passed, value, threshold, message, worst, n, int(failing.sum()))


def judge_finite(m: Measurements) -> Verdict:
    """Every logit on both sides must be finite: a NaN is a failure, never a comparison that passes."""
    if not m.nonfinite:
        return Verdict(m.model, FINITE_CHECK, True, 0.0, None, f"{m.model}: all logits finite on both sides")
    first = m.nonfinite[0]
    where = _where(m, first.prompt, first.position)
    total = sum(b.count for b in m.nonfinite)
    sides = sorted({b.side for b in m.nonfinite})
    return Verdict(m.model, FINITE_CHECK, False, float(total), None,
                   f"{m.model}: {total} non-finite logits (NaN/Inf) in {len(m.nonfinite)} rows of the "
                   f"{' and '.join(sides)} side; first: {first.side} {_where_text(where)} has "
                   f"{first.count} of {first.vocab} values non-finite", where, len(m.nonfinite), len(m.nonfinite))
