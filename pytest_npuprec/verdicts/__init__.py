"""Verdicts: the one place that decides pass/fail and writes the message, for every kind of check.

Messages follow torch.testing's style: what was compared, how many values miss the bound,
the worst value and where it is (prompt and position, or tensor). Each judge is
`judge_<kind>(check, measured)`; `judge_checks` judges every check of a model and adds its name once.
"""
from __future__ import annotations

from ..config.schema import ModelConfig, Threshold
from ..measure import Measured
from ..measure.routing import RoutingMeasurement
from ..measure.thresholds import Measurements
from ..metrics.registry import ROUTING_METRICS
from .kinds import JUDGES, judge_qat_equivalence
from .routing import judge_routing
from .steps import judge_decode
from .thresholds import FINITE_CHECK, judge_finite, judge_threshold
from .verdict import Verdict, verdict

__all__ = ["FINITE_CHECK", "Verdict", "judge_checks", "judge_finite", "judge_threshold", "judge_thresholds",
           "verdict"]


def judge_thresholds(thresholds: tuple[Threshold, ...], measured: Measurements,
                     routing: RoutingMeasurement | None = None) -> dict[str, Verdict]:
    """finite_logits and each metric threshold, by check id (messages without the model name); the routing
    metrics on `routing` (measure/routing.py)."""
    verdicts = {FINITE_CHECK: judge_finite(measured)}
    verdicts.update({t.id: judge_routing(t, routing, measured) if t.metric in ROUTING_METRICS
                     else judge_threshold(t, measured) for t in thresholds})
    return verdicts


def judge_checks(config: ModelConfig, measured: Measured, judged: dict[str, Verdict] | None = None) -> dict[str, Verdict]:
    """Every check of the model, in test order (config.check_ids), each message naming the model; `judged`:
    verdicts judged elsewhere (drift-<metric>, baselines/drift.py)."""
    verdicts = judge_thresholds(config.thresholds, measured.thresholds, measured.routing)
    if config.decode_thresholds:
        assert measured.decode is not None
        verdicts.update(judge_decode(config.decode_thresholds, measured.decode))
    verdicts.update(judged or {})
    checks = config.checks
    for kind in checks.enabled():
        check, values = getattr(checks, kind), getattr(measured, kind)
        if kind == "qat_equivalence":
            verdicts.update(judge_qat_equivalence(check, values))
        else:
            verdicts[kind] = JUDGES[kind](check, values)
    return {check_id: verdicts[check_id].of_model(config.name) for check_id in config.check_ids}
