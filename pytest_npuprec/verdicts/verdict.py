"""One check's outcome, and the one helper that writes its sentence.

Every judge builds its Verdict with `verdict(...)` (keyword arguments only), so every message reads
`<what was compared>: passed|FAILED|skipped (<why>)[: <details>]`; the caller that judges a model adds the
model name once (`Verdict.of_model`). Bounds in words come from `Threshold` (config/schema.py).

A check that compared nothing is neither passed nor failed: it is skipped, with its reason (`not_compared`),
and the plugin's test item turns it into pytest's skip; with `required` (--npuprec-require-records) it is red.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from ..config.schema import Threshold


def clip(text: str, width: int = 60) -> str:
    """`text`, cut to `width` characters with "..." when longer: for messages and table cells."""
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True, kw_only=True)
class Verdict:
    check_id: str
    passed: bool
    message: str
    value: float | None  # the measured value; `value_of` says what it is
    value_of: str  # e.g. "mean cosine_similarity", "perplexity ratio device / reference", "share of prompts ..."
    threshold: Threshold | None = None  # the metric bound, for threshold checks
    bound_text: str | None = None  # the bound in words
    worst: dict[str, Any] | None = None  # where the worst value is: prompt_index, prompt_id, prompt, position, value
    n_values: int = 0  # values (or prompts, runs, tensors) the check looked at
    n_failing: int = 0  # of them, those that miss the bound
    model: str | None = None  # set by `of_model`
    skipped: str | None = None  # why nothing was compared (then passed is False, and it is no failure either)

    @property
    def failed(self) -> bool:
        return not self.passed and self.skipped is None

    @property
    def outcome(self) -> str:
        """passed | failed | skipped"""
        return "skipped" if self.skipped is not None else "passed" if self.passed else "failed"

    def of_model(self, model: str) -> Verdict:
        """This verdict of `model`, its message starting with the model name."""
        return dataclasses.replace(self, model=model, message=f"{model}: {self.message}")

    def as_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {
            "check": self.check_id,
            "metric": t.metric if t else self.check_id,
            "reduce": t.reduce if t else None,
            "bound": t.bound if t else None,
            "threshold": t.value if t else None,
            "value": self.value,
            "value_of": self.value_of,
            "passed": self.passed,
            "skipped": self.skipped,
            "n_values": self.n_values,
            "n_failing": self.n_failing,
            "worst": self.worst,
            "message": self.message,
            "bound_text": self.bound_text,
        }


def verdict(*, check_id: str, what: str, passed: bool, details: Sequence[str] = (), value: float | None,
            value_of: str, threshold: Threshold | None = None, bound_text: str | None = None,
            worst: dict[str, Any] | None = None, n_values: int = 0, n_failing: int = 0,
            skipped: str | None = None) -> Verdict:
    """The Verdict, with its sentence: `<what>: passed|FAILED|skipped (<skipped>)[: <details joined by '; '>]`."""
    said = f"skipped ({skipped})" if skipped is not None else "passed" if passed else "FAILED"
    message = f"{what}: {said}" + (": " + "; ".join(details) if details else "")
    if bound_text is None and threshold is not None:
        bound_text = threshold.condition(threshold.reduce)
    return Verdict(check_id=check_id, passed=passed and skipped is None, message=message, value=value,
                   value_of=value_of, threshold=threshold, bound_text=bound_text, worst=worst, n_values=n_values,
                   n_failing=n_failing, skipped=skipped)


REQUIRE_RECORDS = "--npuprec-require-records"


def not_compared(*, check_id: str, what: str, reason: str, required: bool, details: Sequence[str] = (),
                 value: float | None, value_of: str, bound_text: str | None = None) -> Verdict:
    """A check that had nothing to compare with: skipped with `reason`; red when a comparison was `required`
    (--npuprec-require-records)."""
    if required:
        return verdict(check_id=check_id, what=what, passed=False, value=value, value_of=value_of,
                       bound_text=bound_text, n_values=1, n_failing=1,
                       details=[f"not compared: {reason}", f"{REQUIRE_RECORDS}: a check that compared nothing is red",
                                *details])
    return verdict(check_id=check_id, what=what, passed=False, skipped=f"not compared: {reason}", details=details,
                   value=value, value_of=value_of, bound_text=bound_text)
