"""The router of each MoE layer in the layer-by-layer diagnosis (pure numpy): its logits (msprobe's columns, as
measure/layers.py gives any tensor) and the experts it chose, device and floor against the FP32 reference.

A route (one scored position of one MoE layer) flips when its set of chosen experts differs from the reference's.
A flip where the reference's margin between its k-th and (k+1)-th expert logits is within the tie margin is a BF16
tie: 2 x the floor's router-logit MaxAbsErr at that layer (a margin moves by at most twice one logit's error, as
the routing checks' routing_tie_margin is calibrated). The BF16 floor cannot flip a route outside it; a device
that does chose other experts than its logits gave it grounds to."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def compare_routes(ids: np.ndarray, reference_ids: np.ndarray, reference_logits: np.ndarray,
                   tie_margin: float) -> dict[str, Any]:
    """ids, reference_ids: [P x k]; reference_logits [P x experts]. agreement: share of routes with the reference's
    expert set; flips_beyond_ties: how many differ at a reference margin above tie_margin."""
    ids, reference_ids = np.asarray(ids), np.asarray(reference_ids)
    if ids.shape != reference_ids.shape:
        raise ValueError(f"router: chosen experts {ids.shape} vs the reference's {reference_ids.shape}")
    same = np.all(np.sort(ids, axis=-1) == np.sort(reference_ids, axis=-1), axis=-1)
    k = reference_ids.shape[-1]
    ranked = -np.sort(-np.asarray(reference_logits, dtype=np.float64), axis=-1)
    margin = ranked[:, k - 1] - ranked[:, k] if ranked.shape[-1] > k else np.full(len(same), np.inf)
    return {"agreement": float(same.mean()) if same.size else 1.0,
            "flips_beyond_ties": int(np.count_nonzero(~same & (margin > tie_margin))),
            "flips": int(np.count_nonzero(~same))}


def add_routers(rows: list[Any], device: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                floor: Mapping[str, np.ndarray]) -> None:
    """For each MoE layer whose router the reference saw: rows[layer].device["router"] / .floor["router"] (the
    logits' columns) and .routes (routes, tie margin, and per side agreement and flips)."""
    from .layers import compare_tensors

    if "router_layers" not in reference:
        return
    for side, arrays in (("device", device), ("floor", floor)):
        mine, want = [int(i) for i in arrays.get("router_layers", [])], [int(i) for i in reference["router_layers"]]
        if mine != want:
            raise ValueError(f"layers tap: the {side}'s MoE routers {mine} vs the reference's {want}: both sides "
                             "must route the same layers")
    for m, layer in enumerate(int(i) for i in reference["router_layers"]):
        ref_logits, ref_ids = reference["router_logits"][m], reference["router_ids"][m]
        floor_cols = compare_tensors(floor["router_logits"][m], ref_logits)
        rows[layer].device["router"] = compare_tensors(device["router_logits"][m], ref_logits)
        rows[layer].floor["router"] = floor_cols
        margin = 2.0 * floor_cols["MaxAbsErr"]
        rows[layer].routes = {"routes": int(ref_ids.shape[0]), "tie_margin": margin,
                              "device": compare_routes(device["router_ids"][m], ref_ids, ref_logits, margin),
                              "floor": compare_routes(floor["router_ids"][m], ref_ids, ref_logits, margin)}
