"""A number as the report shows it: NaN, +Inf, -Inf and a missing value each said as what it is.

JSON has no NaN or Infinity, so the JSON report holds a finite float, one of the words "NaN", "+Inf", "-Inf",
or null for a value that is missing (nothing was measured); the terminal, Markdown and JUnit print the same
words ("missing" for null), never a bare `nan` that could be any of the four.
"""
from __future__ import annotations

import math
from typing import Any

MISSING = "missing"


def encode(value: Any) -> Any:
    """A float for the JSON report: itself when finite, else "NaN" / "+Inf" / "-Inf"; None stays None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    return value


def words(value: Any, fmt: str = ".9g") -> str:
    """A value (a float, an encoded word or None) for a table or a property."""
    value = encode(value)
    if value is None:
        return MISSING
    if isinstance(value, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return format(value, fmt)


def scaled(value: Any, factor: float) -> Any:
    """value x factor for a number; a word or None as it is (a percentage of NaN is NaN)."""
    value = encode(value)
    return value * factor if isinstance(value, (int, float)) and not isinstance(value, bool) else value
