"""`precision.drift:` - how much worse than the device's last recorded run a metric may get.

    precision:
      drift:
        kl_divergence: 50%     # today's mean KL may be at most 1.5 x the recorded mean
        relative_l2: 0.25      # a plain number is a fraction: 25 %

Each entry is one more check of the model, `drift-<metric>` (judged in baselines/drift.py against the
device record of the same hardware under the baseline folder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..metrics.registry import METRICS
from .reader import Reader


@dataclass(frozen=True)
class DriftTolerance:
    metric: str
    tolerance: float  # a fraction: 0.5 = today may be 50 % worse than the record (on the metric's mean)

    @property
    def id(self) -> str:
        return f"drift-{self.metric}"


def parse_drift(r: Reader, raw: Any) -> tuple[DriftTolerance, ...]:
    if raw is None:
        return ()
    # the metrics a device record keeps (its logit and token metrics); routing and tower metrics have none yet
    r.mapping(raw, "precision.drift", frozenset(m for m, spec in METRICS.items() if spec.per in ("prompt", "position")))
    out = []
    for metric, value in raw.items():
        out.append(DriftTolerance(metric, _fraction(r, value, f"precision.drift.{metric}")))
    return tuple(out)


def _fraction(r: Reader, value: Any, key: str) -> float:
    expected = "expected a tolerance above 0 such as 50% or 0.5"
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1]) / 100
        except ValueError:
            raise r.fail(key, f"{expected}, got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise r.fail(key, f"{expected}, got {type(value).__name__} {value!r}")
    if not 0 < number < math.inf:
        raise r.fail(key, f"{expected}, got {value!r}")
    return number
