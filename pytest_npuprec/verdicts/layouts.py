"""The parallel_layouts verdict: each other layout vs the configured one (greedy tokens except ties, routing except
near-ties, logits within the per-position bounds) and vs the FP32 reference (the model's bounds), one check.

A failure names the layouts, and the prompt, position (and MoE layer) of the first thing that differs."""
from __future__ import annotations

import math

from ..config.schema import ParallelLayoutsCheck
from ..measure.layouts import LayoutMeasurement, ParallelLayoutsMeasurement
from ..metrics.registry import METRICS, ROUTING_METRICS
from .routing import judge_routing
from .thresholds import judge_finite, judge_threshold
from .verdict import Verdict, verdict


def judge_parallel_layouts(check: ParallelLayoutsCheck, measured: ParallelLayoutsMeasurement) -> Verdict:
    configured = measured.configured
    problems, figures, worst, failing = [], [], None, 0
    for m in measured.layouts:
        found, where = _layout_problems(check, m, configured)
        problems += found
        worst = worst or where
        failing += bool(found)
        figures.append(_figures(m, configured))
    diffs = [_max_abs_diff(m) for m in measured.layouts]
    value = max(diffs, key=lambda v: math.inf if math.isnan(v) else v, default=float("nan"))
    bounds = ", ".join(t.condition() for t in check.thresholds or () if METRICS[t.metric].per == "position")
    return verdict(check_id="parallel_layouts",
                   what=f"parallel_layouts: {', '.join(m.label for m in measured.layouts)} vs {configured} "
                        "(as configured) and vs reference", passed=not problems, details=problems + figures,
                   value=value, value_of="largest logits max |diff| of a layout vs the configured one", worst=worst,
                   bound_text=f"greedy tokens equal except ties; routing equal except near-ties; logits: {bounds}",
                   n_values=len(measured.layouts), n_failing=failing)


def _layout_problems(check: ParallelLayoutsCheck, m: LayoutMeasurement,
                     configured: str) -> tuple[list[str], dict | None]:
    pair = f"layout {m.label} vs {configured}"
    problems: list[str] = []
    worst = None
    finite = judge_finite(m.against_reference)
    if not finite.passed:
        problems.append(f"layout {m.label}: {finite.message}")
        worst = dict(finite.worst or {}, layout=m.label)
    mismatches = m.token_mismatches
    if mismatches:
        d = mismatches[0]
        problems.append(f"{pair}: greedy tokens differ beyond a tie on {len(mismatches)} of {m.prompts} prompts, "
                        f"first prompt {d.prompt_id} at generated token {d.step} (configured {d.configured}, layout "
                        f"{d.layout}; the configured logits favour its token by {d.gap:.4g})")
        worst = worst or {"layout": m.label, "prompt_id": d.prompt_id, "step": d.step}
    if m.route_invalid:
        problems.append(f"{pair}: {len(m.route_invalid)} routes cannot be compared (non-finite reference router "
                        f"logits or an expert id out of range; first: {m.route_invalid[0]})")
    if m.route_flips:
        f = max(m.route_flips, key=lambda flip: flip.spread)
        problems.append(f"{pair}: {len(m.route_flips)} of {m.routes} routes (scored position x MoE layer) chose "
                        f"another expert set beyond the routing tie margin ({m.route_ties} near-ties); worst: layer "
                        f"{f.layer}, prompt {f.prompt_id} position {f.position}: configured experts "
                        f"{list(f.configured)}, layout {list(f.layout)}, reference router logits {f.spread:.4g} apart")
        worst = worst or {"layout": m.label, "prompt_index": f.prompt, "prompt_id": f.prompt_id,
                          "position": f.position, "layer": f.layer, "value": f.spread}
    for t in check.thresholds or ():
        if METRICS[t.metric].per == "position":
            judged = judge_threshold(t, m.against_configured, subject=pair)
            worst = _note(problems, judged, m, worst)
    for t in check.thresholds or ():  # the model's bounds, as the configured layout is judged
        subject = f"layout {m.label} vs reference"
        if t.metric in ROUTING_METRICS:
            worst = _note(problems, judge_routing(t, m.routing_against_reference, m.against_reference), m, worst,
                          f"{subject}: ")
        else:
            worst = _note(problems, judge_threshold(t, m.against_reference, subject=subject), m, worst)
    return problems, worst


def _note(problems: list[str], judged: Verdict, m: LayoutMeasurement, worst: dict | None,
          prefix: str = "") -> dict | None:
    if judged.passed:
        return worst
    problems.append(prefix + judged.message)
    return worst or dict(judged.worst or {}, layout=m.label)


def _max_abs_diff(m: LayoutMeasurement) -> float:
    cells = m.against_configured.cells.get("max_abs_diff")
    return cells.reduce("max") if cells is not None and len(cells.values) else float("nan")


def _figures(m: LayoutMeasurement, configured: str) -> str:
    ties = [d for d in m.divergences if d.status == "tie"]
    kl = m.against_configured.cells.get("kl_divergence")
    routing = (f", routing {m.routes - len(m.route_flips) - m.route_ties} of {m.routes} routes the same expert set "
               f"({m.route_ties} near-ties, {len(m.route_flips)} flips)" if m.routes else "")
    return (f"layout {m.label} vs {configured}: greedy tokens the same on {m.prompts - len(m.divergences)} of "
            f"{m.prompts} prompts ({len(ties)} ties){routing}, logits max |diff| {_max_abs_diff(m):.4g}"
            + (f", KL max {kl.reduce('max'):.3g}" if kl is not None and len(kl.values) else ""))
