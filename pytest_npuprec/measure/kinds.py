"""Measurements for the check kinds beyond metric thresholds: capture records (and the checkpoint
on disk) in, plain values out. Pass/fail and messages are the verdicts' job."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..capture.prompts import PromptText
from ..capture.records import ModelCapture, repeat_side
from ..config.schema import LabelCheck, TernaryWeightsCheck, ThinkingCheck
from ..metrics.perplexity import perplexity, token_nll
from ..metrics.ternary import TernaryResult, check_ternary
from ..metrics.text import ThinkingSplit, extract_label, prompt_opens_thinking, split_thinking


class TokenMismatch(NamedTuple):
    """The first greedy step where a repeat run's tokens differ from run 1's (None: that run had ended)."""

    prompt_id: str
    step: int
    first: int | None  # run 1's token
    again: int | None  # the repeat run's token


@dataclass(frozen=True)
class RunDifference:
    """Device run `run` against run 1."""

    run: int
    token_mismatches: list[TokenMismatch]  # one per prompt whose tokens differ
    max_abs_diff: float  # over every scored logit; NaN if any logit is not finite
    worst_prompt: str | None
    worst_position: int | None


def measure_determinism(capture: ModelCapture) -> list[RunDifference]:
    out = []
    for run in range(2, capture.device_runs + 1):
        side = repeat_side(run)
        mismatches = []
        worst, where, nonfinite = 0.0, (None, None), None
        for record in capture.prompts:  # the perplexity text too: its logits must repeat as well
            first, again = record.generated["device"], record.generated[side]
            step = next((i for i, (a, b) in enumerate(zip(first, again)) if a != b),
                        None if len(first) == len(again) else min(len(first), len(again)))
            if step is not None:
                mismatches.append(TokenMismatch(record.prompt.id, step, _at(first, step), _at(again, step)))
            a, b = np.asarray(record.logits("device")), np.asarray(record.logits(side))
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                nonfinite = nonfinite or (record.prompt.id, None)
                continue
            if a.size:
                diff = np.abs(a.astype(np.float64) - b)
                row, column = np.unravel_index(np.argmax(diff), diff.shape)
                if diff[row, column] > worst or where[0] is None:
                    worst, where = float(diff[row, column]), (record.prompt.id, record.positions[int(row)])
        if nonfinite:  # NaN never compares as identical
            worst, where = float("nan"), nonfinite
        out.append(RunDifference(run, mismatches, worst, *where))
    return out


def _at(tokens: tuple[int, ...], i: int) -> int | None:
    return tokens[i] if i < len(tokens) else None


@dataclass(frozen=True)
class PerplexityMeasurement:
    tokens: int  # predicted tokens (text length - 1)
    reference: float
    device: float

    @property
    def ratio(self) -> float:
        return self.device / self.reference


def measure_perplexity(capture: ModelCapture) -> PerplexityMeasurement:
    (record,) = capture.perplexity()
    targets = np.asarray(record.scored)[np.asarray(record.positions) + 1]
    ppl = {side: perplexity(token_nll(record.logits(side), targets)) for side in ("reference", "device")}
    return PerplexityMeasurement(len(targets), ppl["reference"], ppl["device"])


@dataclass(frozen=True)
class LabelPair:
    prompt_id: str
    reference: str | None
    device: str | None
    reference_text: str
    device_text: str


def measure_labels(texts: list[PromptText], check: LabelCheck) -> list[LabelPair]:
    chosen = [t for t in texts if check.prompts is None or t.id in check.prompts]
    label = lambda text: extract_label(check.pattern, text)  # noqa: E731
    return [LabelPair(t.id, label(t.outputs["reference"]), label(t.outputs["device"]),
                      t.outputs["reference"], t.outputs["device"]) for t in chosen]


@dataclass(frozen=True)
class ThinkingPair:
    prompt_id: str
    opened_by_prompt: bool
    reference: ThinkingSplit
    device: ThinkingSplit


@dataclass(frozen=True)
class ThinkingMeasurement:
    enable_thinking: bool | None  # serve.enable_thinking, the switch the chat template was rendered with
    pairs: list[ThinkingPair]


def measure_thinking(texts: list[PromptText], check: ThinkingCheck,
                     enable_thinking: bool | None) -> ThinkingMeasurement:
    chosen = [t for t in texts if (t.id in check.prompts if check.prompts is not None else t.is_chat)]
    pairs = []
    for t in chosen:
        opened = prompt_opens_thinking(t.prompt, check.open, check.close)
        pairs.append(ThinkingPair(t.id, opened, *(split_thinking(t.outputs[side], check.open, check.close, opened)
                                                  for side in ("reference", "device"))))
    return ThinkingMeasurement(enable_thinking, pairs)


@dataclass(frozen=True)
class TensorTernary:
    name: str
    shape: tuple[int, ...]
    result: TernaryResult | None
    error: str | None = None  # e.g. the input dimension does not split into groups


def measure_ternary(folder: Path, check: TernaryWeightsCheck) -> list[TensorTernary]:
    from ..checkpoints.tensors import iter_tensors

    out = []
    for name, weight in iter_tensors(folder, check.include, check.exclude):
        try:
            out.append(TensorTernary(name, tuple(weight.shape), check_ternary(weight, check.group_size)))
        except ValueError as exc:
            out.append(TensorTernary(name, tuple(weight.shape), None, str(exc)))
    return out
