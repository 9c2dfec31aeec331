"""Capture records -> metric values per cell (prompt, position), streaming one prompt at a time."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..capture.records import ModelCapture, PromptCapture
from ..metrics import logits as logit_metrics
from ..metrics import tokens as token_metrics
from ..metrics.registry import METRICS
from ..metrics.tokens import TokenStatus

REDUCERS = {"mean": np.mean, "min": np.min, "max": np.max}


@dataclass
class Cells:
    """One metric's values, with where each came from."""

    values: np.ndarray  # float64
    prompt: np.ndarray  # prompt index of each value
    position: np.ndarray  # position in the scored sequence (the logits row that predicts position + 1)

    def reduce(self, how: str) -> float:
        """mean, min or max over every prompt and position."""
        return float(REDUCERS[how](self.values))

    def summary(self) -> dict[str, float]:
        return {how: self.reduce(how) for how in REDUCERS}


@dataclass(frozen=True)
class NonFinite:
    side: str
    prompt: int
    position: int
    count: int
    vocab: int


@dataclass
class PromptSummary:
    """The per-prompt row of the report table."""

    index: int
    id: str
    label: str
    prompt_tokens: int
    positions: tuple[int, ...]  # the scored positions (logits rows) of this prompt
    device_tokens: tuple[int, ...]
    reference_tokens: tuple[int, ...]
    first_status: TokenStatus
    prefix_length: int
    prefix_status: TokenStatus
    metrics: dict[str, float] = field(default_factory=dict)  # position metrics, mean over this prompt's rows


@dataclass
class Measurements:
    model: str
    cells: dict[str, Cells]
    prompts: list[PromptSummary]
    nonfinite: list[NonFinite]
    vocab_size: int

    def prompt(self, index: int) -> PromptSummary:
        return self.prompts[index]


def measure(capture: ModelCapture, tie_margin: float | None = None, side: str = "device") -> Measurements:
    """`side`: the device run measured (capture/records.py repeat_side: a repeated run of the same device)."""
    acc: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {name: [] for name in METRICS}
    summaries: list[PromptSummary] = []
    nonfinite: list[NonFinite] = []
    vocab = 0
    for record in capture.compared():
        summary, bad, vocab = _measure_prompt(record, acc, tie_margin, side)
        summaries.append(summary)
        nonfinite.extend(bad)
    cells = {name: Cells(*(np.concatenate(parts) for parts in zip(*chunks)))
             for name, chunks in acc.items() if chunks}
    return Measurements(capture.model, cells, summaries, nonfinite, vocab)


def _measure_prompt(record: PromptCapture, acc: dict, tie_margin: float | None, side: str):
    device, reference = record.logits(side), record.logits("reference")
    if device.shape != reference.shape:
        raise ValueError(f"prompt {record.prompt.id!r}: device logits {device.shape} vs reference "
                         f"{reference.shape}; the two sides must score the same positions and vocabulary")
    index = record.prompt.index
    positions = np.asarray(record.positions, dtype=np.int64)
    prompt_ids = np.full(len(positions), index, dtype=np.int64)
    comparison = logit_metrics.compare_rows(device, reference)
    bad = [NonFinite(which, index, int(positions[row]), int(np.count_nonzero(~np.isfinite(arr[row]))), arr.shape[1])
           for which, arr, bad_rows in ((side, device, comparison.device_nonfinite),
                                        ("reference", reference, comparison.reference_nonfinite))
           for row in bad_rows]

    summary_metrics = {}
    for name, values in comparison.metrics.items():
        acc[name].append((values, prompt_ids, positions))
        summary_metrics[name] = float(np.mean(values)) if len(values) else float("nan")

    rows = record.continuation_rows
    ref_tokens = record.generated["reference"]
    dev_tokens = record.generated[side]
    cont_logits = np.asarray(reference[rows]) if len(rows) else np.empty((0, reference.shape[1]))
    first = token_metrics.first_token_status(dev_tokens, ref_tokens, cont_logits, tie_margin)
    agreement = token_metrics.continuation_agreement(dev_tokens, ref_tokens, cont_logits, tie_margin)
    first_position = np.array([len(record.prompt.token_ids) - 1], dtype=np.int64)
    token_values = {
        "token_agreement": np.nan if first == "nonfinite" else float(first in ("match", "tie")),
        "prefix_agreement": np.nan if agreement.status == "nonfinite" else agreement.score,
    }
    for name, value in token_values.items():
        acc[name].append((np.array([value], dtype=np.float64), np.array([index]), first_position))
    summary = PromptSummary(
        index=index, id=record.prompt.id, label=record.prompt.label, prompt_tokens=len(record.prompt.token_ids),
        positions=record.positions,
        device_tokens=dev_tokens, reference_tokens=ref_tokens, first_status=first,
        prefix_length=agreement.prefix_length, prefix_status=agreement.status, metrics=summary_metrics,
    )
    return summary, bad, device.shape[1]
