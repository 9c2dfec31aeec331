"""The noise floor -> bounds: floor x factor on each metric's badness, rounded outwards; and the refusal.

Badness is how far a value is from perfect: 1 - value for the similarities and agreements (higher is better),
the value itself for the distances. A bound is 1 - factor x badness (min bounds) or factor x badness (max bounds),
its badness rounded up to two significant digits, so the written bound is never tighter than floor x factor.
Pure Python (decimal): no numpy, no engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from ..errors import NpuprecError
from ..metrics.registry import METRICS


class FloorError(NpuprecError):
    """A floor figure that is not a finite number: no bound can be made from it, not even with force."""

# (metric, reduce) written when a config has no thresholds yet: each metric's mean, and the worst row of the
# per-position metrics whose worst case is its own failure mode (tiny-llama's layout)
DEFAULT_LAYOUT: tuple[tuple[str, str], ...] = (
    ("token_agreement", "mean"), ("prefix_agreement", "mean"),
    ("cosine_similarity", "mean"), ("cosine_similarity", "min"),
    ("pearson_correlation", "mean"),
    ("kl_divergence", "mean"), ("kl_divergence", "max"),
    ("relative_l2", "mean"), ("relative_l2", "max"),
    ("max_abs_diff", "max"),
)
DIGITS = 2

Summary = dict[str, dict[str, float]]  # metric -> {mean, min, max}


def badness(metric: str, value: float) -> float:
    return 1.0 - value if METRICS[metric].better == "higher" else value


def round_up(value: Decimal, digits: int = DIGITS) -> Decimal:
    """The smallest number of `digits` significant digits that is >= value (value >= 0)."""
    if value <= 0:
        return Decimal(0)
    quantum = Decimal(1).scaleb(value.adjusted() - digits + 1)
    return value.quantize(quantum, rounding=ROUND_CEILING).normalize()


@dataclass(frozen=True)
class Bound:
    metric: str
    reduce: str
    kind: str  # min | max
    text: str  # the bound as written in the YAML (a YAML 1.1 float: PyYAML needs a dot before an exponent)

    @property
    def value(self) -> float:
        return float(self.text)


def yaml_float(value: Decimal) -> str:
    """`1.2e-5`, `0.99985`, `0.25`: plain decimals down to 1e-4, an exponent below, always with a dot."""
    if value == 0:
        return "0.0"
    if abs(value) >= Decimal("1e-4"):
        text = format(value, "f")
        return text if "." in text else text + ".0"
    digits, exponent = f"{value:e}".split("e")
    digits = digits.rstrip("0").rstrip(".")
    return f"{digits if '.' in digits else digits + '.0'}e{int(exponent)}"


def calibrated_bound(metric: str, reduce: str, floor: float, factor: float, resolution: float = 0.0) -> Bound:
    """floor x factor on the badness, rounded outwards; never below `resolution` (the smallest non-zero badness the
    measurement resolves: calibrate/taps.py)."""
    if not math.isfinite(floor):
        raise FloorError(f"{metric} {reduce}: the BF16 floor measured {floor}; expected a finite number (the floor "
                         "run itself produced NaN/Inf logits), so no bound can be calibrated from it")
    spec = METRICS[metric]
    # in decimal from the value as printed: 1 - 0.99992 is 8e-5, not 8.000000000008e-05 (which rounds up to 9e-5)
    value = Decimal(repr(floor))
    bad = max((Decimal(1) - value) if spec.better == "higher" else value, Decimal(0)) * Decimal(repr(factor))
    bad = round_up(max(bad, Decimal(repr(resolution))))
    if spec.better == "higher":
        return Bound(metric, reduce, "min", yaml_float(max(Decimal(1) - bad, Decimal(repr(spec.lowest)))))
    return Bound(metric, reduce, "max", yaml_float(bad))


def worst_reduce(metric: str) -> str:
    return "min" if METRICS[metric].better == "higher" else "max"


Resolution = dict[tuple[str, str], float]  # (metric, reduce) -> smallest resolvable badness (absent: 0)


def calibrate(layout: tuple[tuple[str, str], ...], floor: Summary, factor: float,
              resolution: Resolution | None = None) -> list[Bound]:
    return [calibrated_bound(metric, reduce, floor[metric][reduce], factor, (resolution or {}).get((metric, reduce), 0.0))
            for metric, reduce in layout]


def refusals(layout: tuple[tuple[str, str], ...], floor: Summary, device: Summary, factor: float,
             resolution: Resolution | None = None) -> list[str]:
    """One line per (metric, reduce) where the device is outside the floor by more than the factor (or either side
    is not a finite number): bounds from such a device would bake its error into the gate. Within the measurement's
    resolution (one route of n) is never outside."""
    lines = []
    for metric, reduce in layout:
        f, d = floor.get(metric, {}).get(reduce, math.nan), device.get(metric, {}).get(reduce, math.nan)
        bf, bd = badness(metric, f), badness(metric, d)
        what = f"{metric} {reduce}"
        least = (resolution or {}).get((metric, reduce), 0.0)
        if not (math.isfinite(f) and math.isfinite(d)):
            lines.append(f"{what}: device {d:.6g}, floor {f:.6g}: not a finite number")
        elif bd > max(factor * max(bf, 0.0), least):
            scale = "1 - value" if METRICS[metric].better == "higher" else "value"
            ratio = f"{bd / bf:.3g} x the floor" if bf > 0 else "the floor is 0"
            lines.append(f"{what}: device {d:.6g}, floor {f:.6g} ({scale}: {ratio}, more than {factor:g} x)")
    return lines


def ratio_badness(ratio: float) -> float:
    """How far a ratio device / reference is from 1, either way (the perplexity check's bound is [1/r, r])."""
    return abs(math.log(ratio)) if ratio > 0 else math.inf


def calibrated_max_ratio(floor_ratio: float, factor: float) -> str:
    """perplexity max_ratio r = exp(factor x |ln floor|), r - 1 rounded up to two significant digits."""
    if not (math.isfinite(floor_ratio) and floor_ratio > 0):
        raise FloorError(f"perplexity ratio: the BF16 floor measured {floor_ratio}; expected a finite positive number")
    excess = Decimal(repr(math.expm1(factor * ratio_badness(floor_ratio))))
    return yaml_float(Decimal(1) + round_up(excess))


def ratio_refusal(floor_ratio: float, device_ratio: float, factor: float) -> str | None:
    what = f"perplexity ratio: device {device_ratio:.6g}, floor {floor_ratio:.6g}"
    if not (math.isfinite(floor_ratio) and math.isfinite(device_ratio)):
        return f"{what}: not a finite number"
    bf, bd = ratio_badness(floor_ratio), ratio_badness(device_ratio)
    if bd > factor * bf:
        ratio = f"{bd / bf:.3g} x the floor" if bf > 0 else "the floor is 0"
        return f"{what} (|ln ratio|: {ratio}, more than {factor:g} x)"
    return None
