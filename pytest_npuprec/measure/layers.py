"""Layer-by-layer divergence (pure numpy): the device's residual stream after every decoder layer, and each
layer's attention and MLP outputs, against the FP32 reference, next to transformers BF16 against the same
reference (the floor: what BF16 alone does to that tensor).

Per tensor (one layer's output at the scored positions of one prompt, [positions x hidden]) the columns of
msprobe's compare tables, with their meanings (the device is msprobe's NPU side, the reference its bench):
  Cosine                    cosine of the two tensors, flattened
  MaxAbsErr                 max |device - reference|
  MaxRelativeErr            max |device - reference| / |reference| (a zero reference element counts as eps)
  One Thousandth Err Ratio  share of elements whose relative error is below 0.001
and RelL2 (||device - reference|| / ||reference||), which sees a change of scale that the cosine cannot.
A MoE layer adds its router: the router logits (the same columns) and the experts chosen (measure/layer_routes.py).
A vision-language model's tower adds one row per vision block (its output, attention and MLP), over every patch.
Which layer or block diverged first is judged on these rows in verdicts/layers.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .layer_routes import add_routers

COLUMNS = ("Cosine", "MaxAbsErr", "MaxRelativeErr", "One Thousandth Err Ratio", "RelL2")
KINDS = ("output", "attention", "mlp")  # per decoder layer: its output (the residual stream), its blocks
VISION_KINDS = ("output", "attention", "mlp")  # per vision block: its output (the hidden state), its parts


def compare_tensors(device: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """msprobe's columns (and RelL2) of device vs reference; NaN where the device is not finite."""
    d = np.asarray(device, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    if d.shape != r.shape:
        raise ValueError(f"device tensor of {d.size} elements vs reference of {r.size}")
    if not np.isfinite(d).all() or not np.isfinite(r).all():
        return dict.fromkeys(COLUMNS, float("nan"))
    eps = float(np.finfo(np.float32).eps)
    diff = d - r
    relative = np.abs(diff) / np.where(r == 0, eps, np.abs(r))  # msprobe adds eps to a zero reference element
    norm_d, norm_r = np.linalg.norm(d), np.linalg.norm(r)
    cosine = float(d @ r / (norm_d * norm_r)) if norm_d > 0 and norm_r > 0 else float(norm_d == norm_r)
    return {
        "Cosine": cosine,
        "MaxAbsErr": float(np.abs(diff).max(initial=0.0)),
        "MaxRelativeErr": float(relative.max(initial=0.0)),
        "One Thousandth Err Ratio": float(np.mean(relative < 1e-3)) if relative.size else 1.0,
        "RelL2": float(np.linalg.norm(diff) / norm_r) if norm_r > 0 else float(np.linalg.norm(diff) > 0),
    }


@dataclass
class LayerRow:
    layer: int  # decoder layer, or vision block
    moe: bool
    device: dict[str, dict[str, float]]  # kind (output, attention, mlp; router) -> columns, device vs reference
    floor: dict[str, dict[str, float]]  # kind -> columns, transformers BF16 vs reference
    routes: dict[str, Any] | None = None  # a MoE layer: the experts chosen (measure/layer_routes.py)


def measure_layers(device: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                   floor: Mapping[str, np.ndarray]) -> list[LayerRow]:
    """Each mapping: kind (layer, attention, mlp) -> [layers x positions x hidden] (the layers taps), and "moe"
    -> bool [layers]. One row per decoder layer: each kind's columns, device vs reference and floor vs reference."""
    n_layers = reference["output"].shape[0]
    for side, arrays in (("device", device), ("floor", floor)):
        for kind in KINDS:
            if arrays[kind].shape != reference[kind].shape:
                raise ValueError(f"layers tap: {side} {kind} {arrays[kind].shape} vs reference "
                                 f"{reference[kind].shape}; both sides must hold the same layers and positions")
    moe = np.asarray(reference.get("moe", np.zeros(n_layers, dtype=bool)), dtype=bool)
    rows = [LayerRow(i, bool(moe[i]) if i < moe.size else False,
                     {k: compare_tensors(device[k][i], reference[k][i]) for k in KINDS},
                     {k: compare_tensors(floor[k][i], reference[k][i]) for k in KINDS})
            for i in range(n_layers)]
    add_routers(rows, device, reference, floor)
    return rows


def measure_vision(device: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                   floor: Mapping[str, np.ndarray]) -> list[LayerRow]:
    """One row per vision block (vision_output / vision_attention / vision_mlp: [blocks x patches x hidden]); none
    when the reference's tower did not run (a model without one, a prompt without images)."""
    if "vision_output" not in reference:
        return []
    for side, arrays in (("device", device), ("floor", floor)):
        for kind in VISION_KINDS:
            got = arrays.get(f"vision_{kind}")
            want = reference[f"vision_{kind}"].shape
            if got is None or got.shape != want:
                raise ValueError(f"layers tap: the {side}'s vision tower gave {kind} "
                                 f"{'nothing' if got is None else got.shape} vs the reference's {want}; both "
                                 "towers must see the same images as the same patches")
    return [LayerRow(i, False, {k: compare_tensors(device[f"vision_{k}"][i], reference[f"vision_{k}"][i])
                                for k in VISION_KINDS},
                     {k: compare_tensors(floor[f"vision_{k}"][i], reference[f"vision_{k}"][i]) for k in VISION_KINDS})
            for i in range(reference["vision_output"].shape[0])]


def load_layers(path: Any) -> dict[str, np.ndarray]:
    with np.load(path) as arrays:
        return {key: arrays[key] for key in arrays.files}
