"""Measuring: capture records (and the checkpoint on disk) in, plain values out.

`thresholds.py` gives each metric's values per cell (prompt, position); `kinds.py` the values of each
check kind (determinism, perplexity, labels, thinking, ternary weights). Pass/fail and the messages
are the verdicts' job (verdicts/thresholds.py, verdicts/kinds.py mirror these two files).
"""
from __future__ import annotations

from dataclasses import dataclass

from .kinds import LabelPair, PerplexityMeasurement, RunDifference, TensorTernary, ThinkingMeasurement
from .layouts import ParallelLayoutsMeasurement
from .prefix_cache import PrefixCacheMeasurement
from .steps import StepDifference
from .routing import RoutingMeasurement
from .thresholds import Measurements
from .vision import VisionMeasurement


@dataclass(frozen=True)
class Measured:
    """Everything a model's checks are judged on: the metric cells of the device comparison, and per
    check kind (field named as the kind) what was measured for it; None where the config sets no such check."""

    thresholds: Measurements
    qat_equivalence: Measurements | None = None  # fake-quant forward (reference side) vs converted (device side)
    ternary_weights: list[TensorTernary] | None = None
    determinism: list[RunDifference] | None = None
    perplexity: PerplexityMeasurement | None = None
    labels: list[LabelPair] | None = None
    thinking: ThinkingMeasurement | None = None
    decode: Measurements | None = None  # the decode-step rows against the reference (measure/steps.py)
    batch_invariance: list[StepDifference] | None = None
    graph_mode: StepDifference | None = None
    prefix_cache: PrefixCacheMeasurement | None = None
    routing: RoutingMeasurement | None = None  # MoE routing, device vs reference (measure/routing.py)
    vision: VisionMeasurement | None = None  # image embeddings and M-RoPE positions (measure/vision.py)
    parallel_layouts: ParallelLayoutsMeasurement | None = None  # other layouts vs the configured (measure/layouts.py)
