"""Measurements on the device's own generation steps (capture/steps.py): decode rows against the
reference, and one generation's step logits against another's (batch_invariance, graph_mode)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture.records import CaptureError, ModelCapture, PromptCapture
from ..capture.steps import ALONE, REVERSED, step_positions, steps_side
from ..metrics import logits as logit_metrics
from ..metrics.tokens import agreed_prefix_length as agreed_prefix
from .thresholds import Cells, Measurements, NonFinite


def decode_rows(record: PromptCapture) -> np.ndarray:
    """Indices k >= 1 of the device's step-logits rows that the reference's teacher-forced rows can judge:
    row k was computed from the device's first k tokens, so they must equal the reference's."""
    device, reference = record.generated["device"], record.generated["reference"]
    agreed = agreed_prefix(device, reference)
    last = min(agreed, len(reference) - 1, len(device) - 1)
    return np.arange(1, last + 1, dtype=np.int64) if last >= 1 else np.zeros(0, dtype=np.int64)


def measure_decode(capture: ModelCapture, prefill: Measurements) -> Measurements:
    """The per-position metrics over the decode rows, against the reference rows of the same positions,
    within each prompt's agreed prefix (after the first divergence only the token checks apply).
    Prompt summaries are prefill's (where a value comes from); per-prompt decode means go to
    `decode_summary`."""
    acc: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {name: [] for name in logit_metrics.ROW_METRICS}
    nonfinite: list[NonFinite] = []
    for record in capture.compared():
        rows = decode_rows(record)
        index = record.prompt.index
        positions = step_positions(record)[rows]
        device = np.asarray(record.logits(steps_side("device"))[rows])
        reference = np.asarray(record.logits("reference"))[_reference_rows(record, positions)]
        comparison = _compare_decode_rows(device, reference)
        nonfinite += [NonFinite(side, index, int(positions[r]), int(np.count_nonzero(~np.isfinite(arr[r]))),
                                arr.shape[1])
                      for side, arr, bad in (("device decode", device, comparison.device_nonfinite),
                                             ("reference", reference, comparison.reference_nonfinite))
                      for r in bad]
        for name, values in comparison.metrics.items():
            acc[name].append((values, np.full(len(rows), index, dtype=np.int64), positions))
    cells = {name: Cells(*(np.concatenate(parts) for parts in zip(*chunks))) for name, chunks in acc.items()}
    return Measurements(capture.model, cells, prefill.prompts, nonfinite, prefill.vocab_size)


def _reference_rows(record: PromptCapture, positions: np.ndarray) -> np.ndarray:
    """The reference's teacher-forced rows at `positions`; a position the reference did not score is an error
    (a row found next to it would compare two different positions)."""
    scored = np.asarray(record.positions, dtype=np.int64)
    rows = np.searchsorted(scored, positions)
    found = rows < len(scored)
    found[found] = scored[rows[found]] == positions[found]
    if not found.all():
        missing = int(positions[np.argmin(found)])
        raise CaptureError(f"prompt {record.prompt.id}: decode step at position {missing} has no reference row at "
                           f"that position (the reference scored positions {_span(scored)}); expected every decode "
                           "position of the agreed prefix to be scored")
    return rows


def _span(positions: np.ndarray) -> str:
    return f"{positions[0]}..{positions[-1]}" if len(positions) else "none"


def _compare_decode_rows(device: np.ndarray, reference: np.ndarray) -> logit_metrics.RowComparison:
    """compare_rows, or empty values without decode rows (whatever shape the empty sides have)."""
    if len(device):
        return logit_metrics.compare_rows(device, reference)
    none = np.zeros(0, dtype=np.int64)
    return logit_metrics.RowComparison({name: np.zeros(0) for name in logit_metrics.ROW_METRICS}, none, none)


def decode_summary(capture: ModelCapture, decode: Measurements) -> dict[str, dict[str, float | int | None]]:
    """prompt id -> decode rows compared and the mean of each metric over them (None without rows)."""
    out = {}
    for record in capture.compared():
        entry: dict[str, float | int | None] = {}
        for name, cells in decode.cells.items():
            values = cells.values[cells.prompt == record.prompt.index]
            entry["rows"] = len(values)
            entry[name] = float(np.mean(values)) if len(values) else None
        out[record.prompt.id] = entry
    return out


@dataclass(frozen=True)
class StepDifference:
    """One generation's step logits against the batch's ("device"), over the rows both computed from
    the same tokens."""

    name: str  # e.g. alone, reversed, graph_mode
    rows: int  # step rows compared
    max_abs_diff: float  # NaN if a compared logit is not finite
    worst_prompt: str | None
    worst_position: int | None
    token_mismatches: list[tuple[str, int]]  # (prompt id, first step whose tokens differ)


def compare_steps(capture: ModelCapture, other: str, name: str) -> StepDifference:
    worst, where, rows, mismatches, nonfinite = 0.0, (None, None), 0, [], None
    for record in capture.compared():
        first, again = record.generated["device"], record.generated[other]
        agreed = agreed_prefix(first, again)
        if agreed < max(len(first), len(again)):
            mismatches.append((record.prompt.id, agreed))
        n = min(agreed + 1, len(first), len(again))  # row k is computed from the first k tokens
        if n == 0:
            continue
        a = np.asarray(record.logits(steps_side("device"))[:n])
        b = np.asarray(record.logits(steps_side(other))[:n])
        rows += n
        positions = step_positions(record)[:n]
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            nonfinite = nonfinite or (record.prompt.id, None)
            continue
        diff = np.abs(a.astype(np.float64) - b)
        row, column = np.unravel_index(np.argmax(diff), diff.shape)
        if diff[row, column] > worst or where[0] is None:
            worst, where = float(diff[row, column]), (record.prompt.id, int(positions[row]))
    if nonfinite:  # NaN never agrees
        worst, where = float("nan"), nonfinite
    return StepDifference(name, rows, worst, *where, token_mismatches=mismatches)


def measure_batch_invariance(capture: ModelCapture) -> list[StepDifference]:
    return [compare_steps(capture, ALONE, "alone"), compare_steps(capture, REVERSED, "reversed batch")]


GRAPH_MODE = "device-graph-flipped"  # the generation of the engine with enforce_eager flipped


def measure_graph_mode(capture: ModelCapture) -> StepDifference:
    return compare_steps(capture, GRAPH_MODE, "enforce_eager flipped")
