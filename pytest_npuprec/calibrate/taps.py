"""The metrics a model's taps add (capture/taps.py), for calibration: their summaries, the smallest badness each
can resolve, their default bounds, and the tie margin a tap calibrates from its own floor.

One entry per tap in TAP_METRICS; a new tap's metrics (a vision tower's) come along by adding its entry here.
tests/unit/test_calibrate.py holds every metric of the registry to be calibrated either from the logits
(measure/thresholds.py) or by one of these entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

from ..metrics.registry import ROUTING_METRICS, VISION_METRICS
from .bounds import Summary, round_up, yaml_float


@dataclass
class TapFigures:
    """What one tap's metrics measured on one capture."""

    summary: Summary = field(default_factory=dict)  # metric -> {mean, min, max}
    # (metric, reduce) -> the smallest non-zero badness the measurement resolves (one route of n: 1/n): a floor
    # measured as 0 says only that the true rate is below it, so a bound never asks for less
    resolution: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class TapMetrics:
    metrics: tuple[str, ...]
    layout: tuple[tuple[str, str], ...]  # (metric, reduce) bounds written when the config has none of the metric
    figures: Callable[[Any, float | None], TapFigures | None]  # (capture, tie margin) -> figures (None: no capture)
    # the precision key of the tap's tie margin, and how it is calibrated from the floor capture (None: no figure)
    tie_key: str | None = None
    tie_margin: Callable[[Any], tuple[str, str] | None] | None = None  # floor capture -> (value text, how)


def _routing_figures(capture: Any, tie_margin: float | None) -> TapFigures | None:
    import numpy as np

    from ..measure.routing import measure_routing

    r = measure_routing(capture, tie_margin)
    if r is None:
        return None
    per_layer = r.layer_agreement()
    load = r.load_difference().max(axis=1) if r.n_routes else np.array([float("nan")])
    nan = float("nan")
    agreement = {"mean": r.agreement(), "min": min(per_layer, default=nan), "max": max(per_layer, default=nan)}
    if r.invalid:  # verdicts/routing.py: NaN, never a pass
        agreement = {k: nan for k in agreement}
        load = np.full_like(load, nan)
    positions, layers = r.agree.shape if r.n_routes else (1, 1)
    return TapFigures(
        summary={"routing_agreement": agreement,
                 "expert_load": {"mean": float(load.mean()), "min": float(load.min()), "max": float(load.max())}},
        resolution={("routing_agreement", "mean"): 1 / (positions * layers),
                    **{("routing_agreement", how): 1 / positions for how in ("min", "max")},
                    **{("expert_load", how): 1 / (positions * r.top_k) for how in ("mean", "min", "max")}})


def _routing_tie_margin(floor: Any) -> tuple[str, str] | None:
    """2 x the largest |BF16 - FP32| router logit of the floor: a margin between two experts moves by at most twice
    one logit's error, so a differing expert set inside it is a BF16 tie (the stand-ins' rule)."""
    from ..measure.routing import router_logit_error

    error = router_logit_error(floor)
    if error is None:
        return None
    return (yaml_float(round_up(Decimal(repr(2 * error)))),
            f"2 x the floor's largest router logit |diff| {error:.3g}")


def _vision_figures(capture: Any, _: float | None) -> TapFigures | None:
    from ..measure.vision import measure_vision

    v = measure_vision(capture)
    return None if v is None else TapFigures(summary=v.summary())


TAP_METRICS: dict[str, TapMetrics] = {
    "routing": TapMetrics(ROUTING_METRICS, (("routing_agreement", "mean"), ("expert_load", "max")), _routing_figures,
                          "routing_tie_margin", _routing_tie_margin),
    "vision": TapMetrics(VISION_METRICS, (("vision_cosine", "min"), ("vision_relative_l2", "max"),
                                          ("vision_max_abs_diff", "max"), ("mrope_mismatches", "max")),
                         _vision_figures),
}


def captured_taps(capture: Any) -> tuple[str, ...]:
    """The taps a capture holds on both sides, in TAP_METRICS order."""
    found = {tap for p in capture.prompts for tap, sides in p.tap_files.items() if {"reference", "device"} <= set(sides)}
    return tuple(tap for tap in TAP_METRICS if tap in found)
