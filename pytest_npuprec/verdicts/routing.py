"""MoE routing thresholds (routing_agreement, expert_load) vs the routing measurement (measure/routing.py).

A failure names the layer, prompt and position of the worst flip and the reference's router margin there
(or the layer and expert whose load moved most)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..config.schema import Threshold
from ..measure.routing import RoutingMeasurement
from ..measure.thresholds import Measurements
from .verdict import clip, verdict

_REDUCE = {"mean": np.mean, "min": np.min, "max": np.max}


def _what(t: Threshold, value: str) -> str:
    return f"{t.metric} {t.reduce} = {value}, threshold {t.op} {t.value:g}"


def _tie_text(r: RoutingMeasurement) -> str:
    return f"{r.tie_margin:g}" if r.tie_margin is not None else "one BF16 ulp of the k-th logit"


def judge_routing(t: Threshold, routing: RoutingMeasurement | None, measured: Measurements) -> Any:
    common = dict(check_id=t.id, threshold=t, value_of=f"{t.reduce} {t.metric}")
    if routing is None:
        return verdict(**common, what=_what(t, "(no values)"), passed=False, value=None,
                       details=["no routing was captured for the compared prompts"])
    if routing.invalid:
        return verdict(**common, what=_what(t, "nan"), passed=False, value=float("nan"),
                       n_values=routing.n_routes, n_failing=len(routing.invalid),
                       details=[f"{len(routing.invalid)} routes cannot be compared (first: {routing.invalid[0]}); "
                                "NaN cannot pass"])
    if t.metric == "routing_agreement":
        return _agreement(t, routing, measured, common)
    return _load(t, routing, common)


def _agreement(t: Threshold, r: RoutingMeasurement, measured: Measurements, common: dict) -> Any:
    per_layer = r.layer_agreement()
    value = r.agreement() if t.reduce == "mean" else float(_REDUCE[t.reduce](per_layer))
    layers = ", ".join(f"layer {layer} {share:.4g}" for layer, share in zip(r.layers, per_layer))
    details = [f"{len(r.flips)} of {r.n_routes} routes (scored position x MoE layer) chose another expert set "
               f"beyond the tie margin {_tie_text(r)} ({r.ties()} differing sets within it count as ties)",
               f"per layer: {layers}"]
    worst = None
    flip = r.worst_flip()
    if flip is not None:
        p = measured.prompt(flip.prompt)
        worst = {"prompt_index": flip.prompt, "prompt_id": p.id, "prompt": p.label, "position": flip.position,
                 "layer": flip.layer, "value": flip.margin, "reference_experts": list(flip.reference),
                 "device_experts": list(flip.device)}
        details.append(f"worst flip: layer {flip.layer}, prompt {p.id} ({clip(p.label)!r}) position {flip.position}: "
                       f"reference experts {list(flip.reference)}, device {list(flip.device)}, reference router "
                       f"margin {flip.margin:.4g} (its k-th logit above the device's pick)")
    return verdict(**common, what=_what(t, f"{value:.6g}"), passed=bool(t.holds(value)), value=value, worst=worst,
                   n_values=r.n_routes, n_failing=len(r.flips), details=details)


def _load(t: Threshold, r: RoutingMeasurement, common: dict) -> Any:
    diff = r.load_difference()  # [L x E]
    per_layer = diff.max(axis=1)
    value = float(_REDUCE[t.reduce](per_layer))
    li, expert = np.unravel_index(int(np.argmax(diff)), diff.shape)
    worst = {"layer": r.layers[int(li)], "expert": int(expert), "value": float(diff[li, expert]),
             "reference_share": float(r.load_reference[li, expert]), "device_share": float(r.load_device[li, expert])}
    n_failing = int(np.count_nonzero(~t.holds(per_layer)))
    return verdict(**common, what=_what(t, f"{value:.6g}"), passed=bool(t.holds(value)), value=value, worst=worst,
                   n_values=len(per_layer), n_failing=n_failing,
                   details=[f"largest load shift: layer {worst['layer']} expert {worst['expert']} took "
                            f"{worst['device_share']:.4g} of the top-{r.top_k} slots on the device, "
                            f"{worst['reference_share']:.4g} on the reference ({int(len(r.agree))} scored tokens)"])
