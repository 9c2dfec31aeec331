"""The decode-step comparison in the report: its metric summary beside prefill's, and per prompt."""
from __future__ import annotations

from typing import Any

from ..measure.thresholds import Measurements
from .document import _finite_or_none


def add_decode(report: dict[str, Any], decode: Measurements, per_prompt: dict[str, dict[str, Any]]) -> None:
    report["decode_metrics"] = {name: ({stat: _finite_or_none(v) for stat, v in cells.summary().items()}
                                       if len(cells.values) else None)
                                for name, cells in decode.cells.items()}
    for p in report["prompts"]:
        entry = per_prompt.get(p["id"], {})
        p["decode"] = {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in entry.items()}
