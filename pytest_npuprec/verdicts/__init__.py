"""Verdicts: the one place that decides pass/fail and writes the message, for every kind of check.

Messages follow torch.testing's style: what was compared, how many values miss the bound,
the worst value and where it is (prompt and position, or tensor).
"""
from __future__ import annotations

from ..config.schema import Threshold
from ..measure.thresholds import Measurements
from .thresholds import FINITE_CHECK, judge, judge_finite
from .verdict import Verdict

__all__ = ["FINITE_CHECK", "Verdict", "judge", "judge_all", "judge_finite"]


def judge_all(m: Measurements, thresholds: tuple[Threshold, ...]) -> dict[str, Verdict]:
    verdicts = {FINITE_CHECK: judge_finite(m)}
    verdicts.update({t.id: judge(m, t) for t in thresholds})
    return verdicts
