"""What the HTML report draws, as plain numbers: per prompt the metrics along the positions (prefill and decode),
the distribution of |device - reference| over every compared logit, and the top tokens of both sides where the
two distributions part most (the worst KL)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..capture.records import ModelCapture
from ..measure.thresholds import Measurements
from .numbers import encode

SERIES = ("kl_divergence", "cosine_similarity")
# |device - reference| bins: decades from 1e-7 to 1e3 (BF16 noise on a logit of 10 is ~0.04)
DIFF_EDGES = np.concatenate([[0.0], 10.0 ** np.arange(-7, 4)])
TOP = 10


def figures(capture: ModelCapture, prefill: Measurements, decode: Measurements | None,
            token_text: Callable[[int], str]) -> dict[str, Any]:
    return {
        "series": {p.id: _series(prefill, decode, p.index) for p in prefill.prompts},
        "abs_diff": _abs_diff_histogram(capture),
        "worst": _worst_position(capture, prefill, token_text),
    }


def _series(prefill: Measurements, decode: Measurements | None, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase, measured in (("prefill", prefill), ("decode", decode)):
        if measured is None:
            continue
        for name in SERIES:
            cells = measured.cells.get(name)
            if cells is None:
                continue
            mine = cells.prompt == index
            order = np.argsort(cells.position[mine], kind="stable")
            out.setdefault(phase, {})["positions"] = cells.position[mine][order].tolist()
            out[phase][name] = [_said(v) for v in cells.values[mine][order]]
    return out


def _abs_diff_histogram(capture: ModelCapture) -> dict[str, Any]:
    counts = np.zeros(len(DIFF_EDGES) - 1, dtype=np.int64)
    nonfinite = 0
    for record in capture.compared():
        device, reference = record.logits("device"), record.logits("reference")
        for row in range(device.shape[0]):
            diff = np.abs(np.asarray(device[row], dtype=np.float64) - np.asarray(reference[row], dtype=np.float64))
            finite = np.isfinite(diff)
            nonfinite += int(diff.size - np.count_nonzero(finite))
            counts += np.histogram(np.clip(diff[finite], 0, DIFF_EDGES[-1]), bins=DIFF_EDGES)[0]
    return {"edges": DIFF_EDGES.tolist(), "counts": counts.tolist(), "nonfinite": nonfinite}


def _worst_position(capture: ModelCapture, prefill: Measurements, token_text: Callable[[int], str]) -> dict | None:
    cells = prefill.cells.get("kl_divergence")
    if cells is None or not len(cells.values):
        return None
    ranked = np.where(np.isfinite(cells.values), cells.values, np.inf)  # a non-finite row is the worst there is
    at = int(np.argmax(ranked))
    index, position = int(cells.prompt[at]), int(cells.position[at])
    record = next(r for r in capture.compared() if r.prompt.index == index)
    row = record.positions.index(position)
    sides = {}
    for side in ("device", "reference"):
        logits = np.asarray(record.logits(side)[row], dtype=np.float64)
        probs = _softmax(logits)
        top = np.argsort(-np.nan_to_num(logits, nan=-np.inf), kind="stable")[:TOP]
        sides[side] = [{"id": int(t), "text": token_text(int(t)), "prob": _said(probs[t]),
                        "logit": _said(logits[t])} for t in top]
    return {"prompt": record.prompt.id, "position": position, "kl_divergence": _said(cells.values[at]),
            "next_token": token_text(record.scored[position + 1]) if position + 1 < len(record.scored) else None,
            **sides}


def _softmax(logits: np.ndarray) -> np.ndarray:
    finite = np.isfinite(logits)
    if not finite.all():
        return np.full_like(logits, np.nan)
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def _said(value: float) -> float | str:
    """JSON-safe and said as what it is: NaN and the infinities as words (report/numbers.py), never a silent null."""
    return encode(float(value))
