"""The layer-by-layer diagnosis judged: which decoder layer's error first leaves its floor, and which block moved it.

A tensor (one layer's output, or its attention or MLP output, at the scored positions) has left its floor when,
device vs reference, 1 - Cosine > DIVERGENCE_FACTOR x the floor's (transformers BF16 vs the same reference) and
> MIN_COSINE_ERROR, or RelL2 > DIVERGENCE_FACTOR x the floor's and > MIN_RELATIVE_L2 (a scale error keeps the
cosine and shows in RelL2); a device tensor that is not finite has left it. The first divergent layer is the
first whose output (the residual stream) has left its floor. Inside it the block that moved it is the first of
attention, then MLP (the order they run: attention's error also moves the MLP's input) whose own output has left
its floor. In a MoE layer the MLP is split: the router (it runs first) moved it when its logits left their floor
or it chose other experts than the reference beyond BF16 ties (measure/layer_routes.py), else the experts (the
MoE block's output given that routing) when that output left its floor. Neither: the norms or the residual adds
moved it. A vision tower runs before the decoder: when one of its blocks' output left its floor, the first such
block is named instead ("vision block N"), with attention or MLP the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from ..measure.layers import LayerRow

DIVERGENCE_FACTOR = 10.0
# below these a difference is BF16 rounding whatever the floor says (a floor can be ~0 where both sides agree)
MIN_COSINE_ERROR = 1e-5
MIN_RELATIVE_L2 = 0.01
RULE = (f"1 - Cosine > {DIVERGENCE_FACTOR:g} x floor and > {MIN_COSINE_ERROR:g}, or RelL2 > "
        f"{DIVERGENCE_FACTOR:g} x floor and > {MIN_RELATIVE_L2:g}")


def _finite(columns: Mapping[str, float]) -> bool:
    return math.isfinite(columns["Cosine"]) and math.isfinite(columns["RelL2"])


def leaves_floor(device: Mapping[str, float], floor: Mapping[str, float]) -> bool:
    if not _finite(device):
        return True
    cos_err, cos_floor = 1.0 - device["Cosine"], max(1.0 - floor["Cosine"], 0.0)
    rel, rel_floor = device["RelL2"], floor["RelL2"]
    return bool((cos_err > DIVERGENCE_FACTOR * cos_floor and cos_err > MIN_COSINE_ERROR)
                or (rel > DIVERGENCE_FACTOR * rel_floor and rel > MIN_RELATIVE_L2))


def floor_ratio(device: Mapping[str, float], floor: Mapping[str, float]) -> float:
    """How many times its floor the device error is: the larger of the (1 - Cosine) and RelL2 ratios, each floor
    held at least at its absolute minimum / DIVERGENCE_FACTOR (inf: not finite)."""
    if not _finite(device):
        return math.inf
    cos = (1.0 - device["Cosine"]) / max(1.0 - floor["Cosine"], MIN_COSINE_ERROR / DIVERGENCE_FACTOR)
    rel = device["RelL2"] / max(floor["RelL2"], MIN_RELATIVE_L2 / DIVERGENCE_FACTOR)
    return float(max(cos, rel))


@dataclass(frozen=True)
class LayerJudgement:
    diverged: dict[str, bool]  # kind (output, attention, mlp; router) -> left its floor
    ratio: dict[str, float]  # kind -> floor_ratio


@dataclass(frozen=True)
class Divergence:
    judged: list[LayerJudgement]  # per decoder layer row
    first_divergent_layer: int | None
    block: str | None  # attention | mlp | router | experts; None: nothing diverged, or no block left its floor
    message: str
    vision_judged: list[LayerJudgement] = field(default_factory=list)  # per vision block row
    first_divergent_vision_block: int | None = None
    where: str | None = None  # "layer 3, experts", "vision block 1, attention"; None: nothing diverged


def _router_diverged(row: LayerRow) -> bool:
    routes = row.routes or {}
    beyond_floor = routes.get("device", {}).get("flips_beyond_ties", 0) > routes.get("floor", {}).get(
        "flips_beyond_ties", 0)
    return bool(leaves_floor(row.device["router"], row.floor["router"]) or beyond_floor)


def _judge(row: LayerRow) -> LayerJudgement:
    diverged = {k: leaves_floor(row.device[k], row.floor[k]) for k in row.device}
    if "router" in row.device:
        diverged["router"] = _router_diverged(row)
    return LayerJudgement(diverged, {k: floor_ratio(row.device[k], row.floor[k]) for k in row.device})


def _moved_by(row: LayerRow, j: LayerJudgement) -> tuple[str | None, str]:
    """(block, the sentence saying so) of a divergent layer or vision block."""
    order = ("attention", "router", "mlp") if "router" in j.diverged else ("attention", "mlp")
    kind = next((k for k in order if j.diverged[k]), None)
    if kind is None:
        return None, "neither attention nor the MLP output left its floor: the norms or residual adds moved it"
    block = ("experts" if row.moe else "mlp") if kind == "mlp" else kind
    said = f"{block} moved it ({block} {'logits' if kind == 'router' else 'output'} {j.ratio[kind]:.3g}x its floor"
    if kind == "router":
        routes = row.routes or {}
        said += (f"; {routes['device']['flips_beyond_ties']} of {routes['routes']} routes chose other experts "
                 f"beyond BF16 ties (margin {routes['tie_margin']:.3g}), the floor "
                 f"{routes['floor']['flips_beyond_ties']}")
    if kind != "attention":
        said += f"; attention {j.ratio['attention']:.3g}x"
    return block, said + ")"


def _what(row: LayerRow, j: LayerJudgement) -> str:
    dev = row.device["output"]
    return ("its output is not finite" if not _finite(dev) else
            f"1 - Cosine {1 - dev['Cosine']:.3g}, RelL2 {dev['RelL2']:.3g}: {j.ratio['output']:.3g}x its floor")


def judge_layers(rows: list[LayerRow], vision_rows: list[LayerRow] | None = None) -> Divergence:
    judged = [_judge(row) for row in rows]
    vision_judged = [_judge(row) for row in vision_rows or []]
    first_vision = next((i for i, j in enumerate(vision_judged) if j.diverged["output"]), None)
    first = next((i for i, j in enumerate(judged) if j.diverged["output"]), None)
    first_layer = rows[first].layer if first is not None else None
    if first_vision is not None:  # the tower runs before the decoder: its first divergent block comes first
        row, j = vision_rows[first_vision], vision_judged[first_vision]
        block, inside = _moved_by(row, j)
        where = f"vision block {row.layer}" + (f", {block}" if block else "")
        after = f"; first divergent decoder layer: {first_layer}" if first_layer is not None else ""
        return Divergence(judged, first_layer, block,
                          f"first divergent: vision block {row.layer} ({_what(row, j)}); {inside}{after}",
                          vision_judged, row.layer, where)
    tower = "no vision block nor " if vision_rows else "no "
    if first is None:
        worst = max(range(len(rows)), key=lambda i: judged[i].ratio["output"], default=None)
        tail = (f" (largest: layer {rows[worst].layer} at {judged[worst].ratio['output']:.3g}x its floor)"
                if worst is not None else "")
        flipped = [row.layer for row, j in zip(rows, judged) if j.diverged.get("router")]
        tail += (f"; the routers of MoE layers {flipped} left their floor all the same" if flipped else "")
        return Divergence(judged, None, None, f"{tower}decoder layer left its BF16 floor ({RULE}){tail}",
                          vision_judged)
    row, j = rows[first], judged[first]
    block, inside = _moved_by(row, j)
    return Divergence(judged, row.layer, block, f"first divergent layer: {row.layer} ({_what(row, j)}); {inside}",
                      vision_judged, None, f"layer {row.layer}" + (f", {block}" if block else ""))
