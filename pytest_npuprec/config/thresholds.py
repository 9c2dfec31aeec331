"""precision.thresholds (and any other bounds block): metric -> {min|max, reduce} -> Threshold objects."""
from __future__ import annotations

import math
from typing import Any

from ..metrics.registry import METRICS
from .reader import Reader
from .schema import Threshold

_REDUCE = ("mean", "min", "max")
_PHASES = ("prefill", "decode")


def parse_thresholds(r: Reader, raw: Any, where: str = "precision.thresholds",
                     phases: bool = False) -> tuple[Threshold, ...]:
    """A mapping metric -> bound, or metric -> list of bounds with different reductions (per phase, with
    `phases`: a bound may say `phase: decode`)."""
    r.typed(raw, where, dict)
    if not raw:
        raise r.fail(where, "empty; expected at least one metric bound")
    out: list[Threshold] = []
    for metric, spec in raw.items():
        key = f"{where}.{metric}"
        if metric not in METRICS:
            raise r.fail(key, f"unknown metric; expected one of: {', '.join(METRICS)}")
        bounds = spec if isinstance(spec, list) else [spec]
        if not bounds:
            raise r.fail(key, "empty list; expected at least one bound such as {min: 0.99}")
        parsed = [_threshold(r, metric, b, f"{key}[{i}]" if isinstance(spec, list) else key, phases)
                  for i, b in enumerate(bounds)]
        for phase in _PHASES:
            group = [t for t in parsed if t.phase == phase]
            reductions = [t.reduce for t in group]
            if len(set(reductions)) != len(reductions):
                raise r.fail(key, "two bounds with the same reduce"
                             + (f" and phase {phase}" if phases else "") + "; expected one bound per reduction")
            for t in group:
                check_id = metric if len(group) == 1 else f"{metric}-{t.reduce}"
                if phase == "decode":
                    check_id += "-decode"
                out.append(Threshold(t.metric, t.bound, t.value, t.reduce, id=check_id, phase=phase))
    return tuple(out)


def _threshold(r: Reader, metric: str, raw: Any, key: str, phases: bool = False) -> Threshold:
    spec = METRICS[metric]
    r.mapping(raw, key, frozenset({"min", "max", "reduce", "phase"} if phases else {"min", "max", "reduce"}))
    bounds = [b for b in ("min", "max") if b in raw]
    if len(bounds) != 1:
        raise r.fail(key, "expected exactly one of `min` or `max`")
    bound = bounds[0]
    value = float(r.typed(raw[bound], f"{key}.{bound}", float, int))
    wanted = "min" if spec.better == "higher" else "max"
    if bound != wanted:
        raise r.fail(f"{key}.{bound}", f"{metric} is {spec.better}-is-better; expected a `{wanted}` bound")
    if math.isnan(value) or not spec.bound_is_possible(bound, value):
        raise r.fail(f"{key}.{bound}", f"impossible bound {value:g}: {metric} lies in "
                                       f"[{spec.lowest:g}, {spec.highest:g}]")
    reduce = r.choice(raw.get("reduce", "mean"), f"{key}.reduce", _REDUCE)
    phase = r.choice(raw.get("phase", "prefill"), f"{key}.phase", _PHASES)
    if phase == "decode" and spec.per != "position":
        over = ("once per prompt over the whole continuation" if spec.per == "prompt"
                else "per image of the teacher-forced scoring pass" if spec.per == "image"
                else "on the routing of the teacher-forced scoring pass")
        raise r.fail(f"{key}.phase", f"{metric} is measured {over}; expected phase bounds only on per-position "
                                     "metrics")
    return Threshold(metric, bound, value, reduce, id=metric, phase=phase)
