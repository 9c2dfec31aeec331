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
from ..measure.vision import VisionMeasurement
from ..metrics.registry import METRICS, ROUTING_METRICS, VISION_METRICS
from .kinds import JUDGES, judge_qat_equivalence
from .routing import judge_routing
from .steps import judge_decode
from .thresholds import FINITE_CHECK, judge_finite, judge_threshold
from .verdict import Verdict, verdict
from .vision import judge_vision, language_note, with_note

__all__ = ["FINITE_CHECK", "Verdict", "judge_checks", "judge_finite", "judge_threshold", "judge_thresholds",
           "verdict"]


def judge_thresholds(thresholds: tuple[Threshold, ...], measured: Measurements,
                     routing: RoutingMeasurement | None = None,
                     vision: VisionMeasurement | None = None) -> dict[str, Verdict]:
    """finite_logits and each metric threshold, by check id (messages without the model name); the routing
    metrics on `routing` (measure/routing.py), the vision metrics on `vision` (measure/vision.py)."""
    verdicts = {FINITE_CHECK: judge_finite(measured)}
    for t in thresholds:
        if t.metric in ROUTING_METRICS:
            verdicts[t.id] = judge_routing(t, routing, measured)
        elif t.metric in VISION_METRICS:
            verdicts[t.id] = judge_vision(t, vision, measured)
        else:
            verdicts[t.id] = judge_threshold(t, measured)
    note = language_note(verdicts, [t.id for t in thresholds if t.metric in VISION_METRICS])
    if note:  # a failing logit check of a model whose vision side was compared says which side moved
        for t in thresholds:
            if METRICS[t.metric].per in ("position", "prompt") and t.metric not in VISION_METRICS \
                    and verdicts[t.id].failed:
                verdicts[t.id] = with_note(verdicts[t.id], note)
    return verdicts


def judge_checks(config: ModelConfig, measured: Measured, judged: dict[str, Verdict] | None = None) -> dict[str, Verdict]:
    """Every check of the model, in test order (config.check_ids), each message naming the model; `judged`:
    verdicts judged elsewhere (drift-<metric>, baselines/drift.py)."""
    verdicts = judge_thresholds(config.thresholds, measured.thresholds, measured.routing, measured.vision)
    if config.decode_thresholds:
        assert measured.decode is not None
        decode = judge_decode(config.decode_thresholds, measured.decode)
        note = language_note(verdicts, [t.id for t in config.thresholds if t.metric in VISION_METRICS])
        verdicts.update({k: with_note(v, note) if note and v.failed else v for k, v in decode.items()})
    verdicts.update(judged or {})
    checks = config.checks
    for kind in checks.enabled():
        check, values = getattr(checks, kind), getattr(measured, kind)
        if kind == "qat_equivalence":
            verdicts.update(judge_qat_equivalence(check, values))
        else:
            verdicts[kind] = JUDGES[kind](check, values)
    return {check_id: verdicts[check_id].of_model(config.name) for check_id in config.check_ids}
