"""The layer-by-layer diagnosis judged: which decoder layer's error first leaves its floor, and which block moved it.

A tensor (one layer's output, or its attention or MLP output, at the scored positions) has left its floor when,
device vs reference, 1 - Cosine > DIVERGENCE_FACTOR x the floor's (transformers BF16 vs the same reference) and
> MIN_COSINE_ERROR, or RelL2 > DIVERGENCE_FACTOR x the floor's and > MIN_RELATIVE_L2 (a scale error keeps the
cosine and shows in RelL2); a device tensor that is not finite has left it. The first divergent layer is the
first whose output (the residual stream) has left its floor. Inside it the block that moved it is the first of
attention, then MLP (the order they run: attention's error also moves the MLP's input) whose own output has left
its floor; the MLP of a MoE layer is called "experts". Neither: the norms or the residual adds moved it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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
    diverged: dict[str, bool]  # kind (layer, attention, mlp) -> left its floor
    ratio: dict[str, float]  # kind -> floor_ratio


@dataclass(frozen=True)
class Divergence:
    judged: list[LayerJudgement]  # per row
    first_divergent_layer: int | None
    block: str | None  # attention | mlp | experts; None: no layer diverged, or neither block left its floor
    message: str


def judge_layers(rows: list[LayerRow]) -> Divergence:
    judged = [LayerJudgement({k: leaves_floor(row.device[k], row.floor[k]) for k in row.device},
                             {k: floor_ratio(row.device[k], row.floor[k]) for k in row.device}) for row in rows]
    first = next((i for i, j in enumerate(judged) if j.diverged["output"]), None)
    if first is None:
        worst = max(range(len(rows)), key=lambda i: judged[i].ratio["output"], default=None)
        tail = (f" (largest: layer {rows[worst].layer} at {judged[worst].ratio['output']:.3g}x its floor)"
                if worst is not None else "")
        return Divergence(judged, None, None, f"no decoder layer left its BF16 floor ({RULE}){tail}")
    row, j = rows[first], judged[first]
    kind = next((k for k in ("attention", "mlp") if j.diverged[k]), None)
    block = ("experts" if row.moe else "mlp") if kind == "mlp" else kind
    dev = row.device["output"]
    what = ("its output is not finite" if not _finite(dev) else
            f"1 - Cosine {1 - dev['Cosine']:.3g}, RelL2 {dev['RelL2']:.3g}: {j.ratio['output']:.3g}x its floor")
    inside = (f"{block} moved it ({block} output {j.ratio[kind]:.3g}x its floor"
              + (f"; attention {j.ratio['attention']:.3g}x)" if kind == "mlp" else ")")
              if kind else "neither attention nor the MLP output left its floor: the norms or residual adds moved it")
    return Divergence(judged, row.layer, block, f"first divergent layer: {row.layer} ({what}); {inside}")
