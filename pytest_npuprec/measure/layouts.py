"""The parallel_layouts check's values: each other layout's engine against the configured one (the device with
itself: greedy tokens, routing, teacher-forced logits) and against the FP32 reference (capture/layouts.py).

Tokens: the layout's greedy continuation against the configured one's; at their first difference the configured
engine's step logits judge it a tie (the configured token scored within the tie margin above the layout's,
metrics/tokens.py) or a mismatch.

Routing (a MoE model): at each scored position and MoE layer the two engines' expert sets; a differing pair is a
*tie* when each set is within the routing tie margin of the FP32 reference's choice (measure/routing.py's rule,
on the compact reference a baseline keeps too: BF16 arithmetic alone could order those experts either way), else
a *flip*.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..capture.layouts import layout_side
from ..capture.records import ModelCapture, PromptCapture
from ..capture.steps import steps_side
from ..config.schema import ParallelLayoutsCheck, PrecisionConfig, ServeConfig, layout_label
from ..metrics.tokens import MISMATCH, NONFINITE, continuation_agreement
from .routing import TAP, RoutingMeasurement, compare_compact, measure_routing, reference_routes
from .thresholds import Measurements, measure

CONFIGURED = "device"  # the configured layout's side


@dataclass(frozen=True)
class TokenDivergence:
    prompt_id: str
    step: int  # index of the first generated token that differs
    configured: int | None  # the tokens there (None: that generation had ended)
    layout: int | None
    gap: float  # the configured step logits: its token minus the layout's (NaN when one had ended)
    status: str  # tie | mismatch | nonfinite (metrics/tokens.py)


@dataclass(frozen=True)
class RouteFlip:
    prompt: int  # prompt index
    prompt_id: str
    position: int
    layer: int
    configured: tuple[int, ...]  # expert sets, sorted
    layout: tuple[int, ...]
    spread: float  # reference router logits: the largest minus the smallest among the experts the sets differ in


@dataclass
class LayoutMeasurement:
    label: str  # e.g. "tensor_parallel_size=2"
    side: str
    prompts: int  # compared prompts
    divergences: list[TokenDivergence]  # prompts whose greedy tokens differ from the configured layout's
    against_configured: Measurements  # layout (device side) vs configured (reference side), per position
    against_reference: Measurements  # layout vs the FP32 reference, as the configured device is measured
    routing_against_reference: RoutingMeasurement | None
    routes: int = 0  # (scored position, MoE layer) routes compared with the configured layout's
    route_ties: int = 0
    route_flips: list[RouteFlip] = field(default_factory=list)
    route_invalid: list[str] = field(default_factory=list)  # non-finite reference logits, ids out of range

    @property
    def token_mismatches(self) -> list[TokenDivergence]:
        return [d for d in self.divergences if d.status != "tie"]


@dataclass
class ParallelLayoutsMeasurement:
    configured: str  # the configured layout's label
    layouts: list[LayoutMeasurement]


def measure_parallel_layouts(capture: ModelCapture, check: ParallelLayoutsCheck, precision: PrecisionConfig,
                             serve: ServeConfig) -> ParallelLayoutsMeasurement:
    """`serve`: the configured layout's settings."""
    out = []
    for i, layout in enumerate(check.layouts):
        side = layout_side(i)
        records = capture.compared()
        out.append(LayoutMeasurement(
            label=layout.label, side=side, prompts=len(records),
            divergences=[d for r in records if (d := _divergence(r, side, precision.tie_margin)) is not None],
            against_configured=measure(_view(capture, side, CONFIGURED), precision.tie_margin),
            against_reference=measure(_view(capture, side, "reference"), precision.tie_margin),
            routing_against_reference=measure_routing(_view(capture, side, "reference"), precision.routing_tie_margin),
        ))
        _compare_routing(out[-1], records, precision.routing_tie_margin)
    return ParallelLayoutsMeasurement(layout_label(serve), out)


def _view(capture: ModelCapture, side: str, against: str) -> ModelCapture:
    """The compared prompts with `side` in the device's place and `against` in the reference's."""
    def one(r: PromptCapture) -> PromptCapture:
        taps = r.tap_files.get(TAP, {})
        return dataclasses.replace(
            r, generated={"reference": r.generated[against], "device": r.generated[side]},
            logits_files={"reference": r.logits_files[against], "device": r.logits_files[side]},
            tap_files={TAP: {"reference": taps[against], "device": taps[side]}} if against in taps and side in taps
            else {})
    return dataclasses.replace(capture, prompts=[one(r) for r in capture.compared()])


def _divergence(record: PromptCapture, side: str, margin: float | None) -> TokenDivergence | None:
    configured, layout = record.generated[CONFIGURED], record.generated[side]
    steps = np.asarray(record.logits(steps_side(CONFIGURED)))
    agreement = continuation_agreement(layout, configured, steps, margin)
    if agreement.status == "match":
        return None
    k = agreement.diverged_at if agreement.diverged_at is not None else agreement.prefix_length
    a = configured[k] if k < len(configured) else None
    b = layout[k] if k < len(layout) else None
    gap = float(steps[k, a]) - float(steps[k, b]) if a is not None and b is not None else float("nan")
    status = agreement.status if agreement.status in ("tie", NONFINITE) else MISMATCH
    return TokenDivergence(record.prompt.id, k, a, b, gap, status)


def route_sets_differ(reference: dict[str, np.ndarray], ids_a: np.ndarray, ids_b: np.ndarray,
                      tie_margin: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a compact FP32 reference (measure/routing.py: a live run's router logits compacted, or a baseline's) and
    two [N x L x k] expert id arrays: (exact, tie, spread, invalid), each [N x L]. Two sets that differ are a tie
    when each is within the tie margin of the reference's choice (the routing check's own rule, so a live and a
    replayed reference judge alike); spread: the larger of the two sets' margins to the reference (0 where the sets
    are equal)."""
    agree_a, _, margin_a, invalid_a = compare_compact(reference, ids_a, tie_margin)
    agree_b, _, margin_b, invalid_b = compare_compact(reference, ids_b, tie_margin)
    n_experts = np.asarray(reference["gaps"]).shape[-1]
    chosen = []
    for ids in (ids_a, ids_b):
        mask = np.zeros(np.asarray(reference["gaps"]).shape, dtype=bool)
        np.put_along_axis(mask, np.clip(np.asarray(ids).astype(np.int64), 0, n_experts - 1), True, axis=-1)
        chosen.append(mask)
    same = (chosen[0] == chosen[1]).all(axis=-1)
    invalid = invalid_a | invalid_b
    tie = ~same & agree_a & agree_b & ~invalid
    spread = np.where(same, 0.0, np.maximum(margin_a, margin_b))
    return same & ~invalid, tie, spread, invalid


def _compare_routing(m: LayoutMeasurement, records: list[PromptCapture], tie_margin: float | None) -> None:
    """Routing of the layout vs the configured layout, where both and the reference captured it."""
    for record in records:
        taps = record.tap_files.get(TAP, {})
        if not all(s in taps for s in ("reference", CONFIGURED, m.side)):
            continue
        ref, a, b = (record.tap(TAP, s) for s in ("reference", CONFIGURED, m.side))
        layers = [int(x) for x in ref["layers"]]
        # a live reference's router logits compacted, or a baseline replay's compact form, checked for its margin
        compact = reference_routes(ref, tie_margin, record.prompt.id)
        exact, tie, spread, invalid = route_sets_differ(compact, a["expert_ids"], b["expert_ids"], tie_margin)
        m.routes += int(exact.size)
        m.route_ties += int(np.count_nonzero(tie))
        for row, col in zip(*np.nonzero(invalid)):
            m.route_invalid.append(f"prompt {record.prompt.id} position {record.positions[row]} layer {layers[col]}")
        for row, col in zip(*np.nonzero(~exact & ~tie & ~invalid)):
            m.route_flips.append(RouteFlip(
                record.prompt.index, record.prompt.id, int(record.positions[row]), layers[col],
                tuple(sorted(int(x) for x in a["expert_ids"][row, col])),
                tuple(sorted(int(x) for x in b["expert_ids"][row, col])), float(spread[row, col])))
