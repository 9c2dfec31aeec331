"""One check's outcome: passed or not, the value, the bound and the message that explains it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import Threshold


def clip(text: str, width: int = 60) -> str:
    """`text`, cut to `width` characters with "..." when longer: for messages and table cells."""
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True)
class Verdict:
    model: str
    check_id: str
    passed: bool
    value: float | None
    threshold: Threshold | None
    message: str
    worst: dict[str, Any] | None = None
    n_values: int = 0
    n_failing: int = 0
    bound_text: str | None = None  # the bound in words, for checks without a metric Threshold

    def as_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {
            "check": self.check_id,
            "metric": t.metric if t else self.check_id,
            "reduce": t.reduce if t else None,
            "bound": t.bound if t else None,
            "threshold": t.value if t else None,
            "value": self.value,
            "passed": self.passed,
            "n_values": self.n_values,
            "n_failing": self.n_failing,
            "worst": self.worst,
            "message": self.message,
            "bound_text": self.bound_text,
        }
