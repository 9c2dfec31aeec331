"""The bounds on the decode-step rows: a metric's `phase: decode` bounds, else a copy of its prefill bounds.

Token metrics are per prompt (they already judge the whole continuation) and have no decode twin.
`precision.decode: false` turns the decode comparison off (no decode bounds, no step capture).
"""
from __future__ import annotations

import dataclasses

from ..metrics.registry import METRICS
from .schema import Threshold


def decode_thresholds(thresholds: tuple[Threshold, ...], enabled: bool = True) -> tuple[Threshold, ...]:
    if not enabled:
        return ()
    explicit = [t for t in thresholds if t.phase == "decode"]
    own = {t.metric for t in explicit}
    copies = [dataclasses.replace(t, phase="decode", id=f"{t.id}-decode") for t in thresholds
              if t.phase == "prefill" and METRICS[t.metric].per == "position" and t.metric not in own]
    by_metric = {name: i for i, name in enumerate(METRICS)}
    return tuple(sorted(explicit + copies, key=lambda t: by_metric[t.metric]))
