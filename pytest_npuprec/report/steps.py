"""The decode-step comparison in the report: its metric summary beside prefill's, and per prompt."""
from __future__ import annotations

from typing import Any

from ..measure.thresholds import Measurements
from .numbers import encode


def add_decode(report: dict[str, Any], decode: Measurements, per_prompt: dict[str, dict[str, Any]]) -> None:
    report["decode_metrics"] = {name: ({stat: encode(v) for stat, v in cells.summary().items()}
                                       if len(cells.values) else None)
                                for name, cells in decode.cells.items()}
    for p in report["prompts"]:
        entry = per_prompt.get(p["id"], {})
        p["decode"] = {k: encode(v) for k, v in entry.items()}
