"""The terminal summary of a calibration: floor and device side by side, per metric, mean and worst."""
from __future__ import annotations

import math

from .bounds import worst_reduce
from .session import Calibration


def _cell(value: float | None) -> str:
    return f"{'-':>12}" if value is None else f"{value:>12.6g}" if math.isfinite(value) else f"{value!s:>12}"


def render(cal: Calibration) -> list[str]:
    lines = [f"{cal.model}: calibration, factor {cal.factor:g}: floor = transformers BF16 vs FP32, "
             "device = the engine under test vs FP32"]
    if cal.floor:
        lines.append(f"  {'metric':<22}{'floor mean':>12}{'worst':>12}{'device mean':>12}{'worst':>12}  bound(s)")
        for metric in dict.fromkeys(m for m, _ in cal.layout):
            worst = worst_reduce(metric)
            f, d = cal.floor.get(metric, {}), cal.device.get(metric, {})
            bounds = ", ".join(f"{b.reduce} {'>=' if b.kind == 'min' else '<='} {b.text}"
                               for b in cal.bounds if b.metric == metric)
            lines.append(f"  {metric:<22}{_cell(f.get('mean'))}{_cell(f.get(worst))}"
                         f"{_cell(d.get('mean'))}{_cell(d.get(worst))}  {bounds}")
        if cal.perplexity is not None:
            f, d, bound = cal.perplexity
            lines.append(f"  {'perplexity_ratio':<22}{_cell(f)}{'':>12}{_cell(d)}{'':>12}  max_ratio {bound}")
        lines.extend(f"  {key} {value}: {how}" for key, (value, how) in cal.tie_margins.items())
    if cal.drift is not None and cal.drift.tolerances:
        lines.extend("  " + line for line in cal.drift.comment(cal.factor))
    lines.append("  " + cal.message)
    return lines
