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
from .verdict import Verdict, clip, verdict


def _where(m: Measurements, prompt: int, position: int) -> dict[str, Any]:
    p = m.prompt(prompt)
    return {"prompt_index": prompt, "prompt_id": p.id, "prompt": p.label, "position": position}


def _where_text(w: dict[str, Any]) -> str:
    return f"prompt {w['prompt_id']} ({clip(w['prompt'])!r}) position {w['position']}"


def _what(threshold: Threshold, value: str, subject: str | None) -> str:
    return ((f"{subject}: " if subject else "")
            + f"{threshold.metric} {threshold.reduce} = {value}, threshold {threshold.op} {threshold.value:g}")


def judge_threshold(threshold: Threshold, measured: Measurements, check_id: str | None = None,
                    subject: str | None = None) -> Verdict:
    """`check_id` defaults to the threshold's id; qat_equivalence gives its own, and a `subject` naming
    what was compared when it is not the model's device and reference."""
    spec = METRICS[threshold.metric]
    cells: Cells | None = measured.cells.get(threshold.metric)
    common = dict(check_id=check_id or threshold.id, threshold=threshold,
                  value_of=f"{threshold.reduce} {threshold.metric}")
    if cells is None or len(cells.values) == 0:
        return verdict(**common, what=_what(threshold, "(no values)", subject), passed=False, value=None,
                       details=["no values were measured (no scored positions)"])
    values = cells.values
    n = len(values)
    nan = np.isnan(values)
    if nan.any():
        first = int(np.flatnonzero(nan)[0])
        where = _where(measured, int(cells.prompt[first]), int(cells.position[first]))
        return verdict(**common, what=_what(threshold, "nan", subject), passed=False,
                       value=float("nan"), worst=where, n_values=n, n_failing=int(nan.sum()),
                       details=[f"{int(nan.sum())} of {n} values are NaN because the logits are not finite "
                                f"(first at {_where_text(where)}); NaN cannot pass"])
    value = cells.reduce(threshold.reduce)
    worst_i = int(np.argmin(values) if spec.better == "higher" else np.argmax(values))
    worst = dict(_where(measured, int(cells.prompt[worst_i]), int(cells.position[worst_i])),
                 value=float(values[worst_i]))
    n_failing = int(np.count_nonzero(~threshold.holds(values)))
    scope = "prompts" if spec.per == "prompt" else "values (prompt x position)"
    return verdict(**common, what=_what(threshold, f"{value:.6g}", subject),
                   passed=bool(threshold.holds(value)), value=value, worst=worst, n_values=n, n_failing=n_failing,
                   details=[f"{n_failing} of {n} {scope} miss the bound",
                            f"worst {worst['value']:.6g} at {_where_text(worst)}"])


def judge_finite(measured: Measurements) -> Verdict:
    """Every logit on both sides must be finite: a NaN is a failure, never a comparison that passes."""
    common = dict(check_id=FINITE_CHECK, what="all logits finite on both sides", value_of="non-finite logits")
    bad = measured.nonfinite
    if not bad:
        return verdict(**common, passed=True, value=0.0)
    first = bad[0]
    where = _where(measured, first.prompt, first.position)
    total = sum(b.count for b in bad)
    sides = sorted({b.side for b in bad})
    return verdict(**common, passed=False, value=float(total), worst=where, n_values=len(bad), n_failing=len(bad),
                   details=[f"{total} non-finite logits (NaN/Inf) in {len(bad)} rows of the {' and '.join(sides)} "
                            f"side; first: {first.side} {_where_text(where)} has {first.count} of {first.vocab} "
                            "values non-finite"])
