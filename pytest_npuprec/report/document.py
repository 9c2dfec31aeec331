"""The report of one model as a plain, JSON-ready dict: everything the table shows, and more."""
from __future__ import annotations

import datetime as _dt
from typing import Any, Callable

from ..config.schema import ModelConfig
from ..measure.thresholds import Measurements
from ..verdicts import Verdict

REPORT_FORMAT = 1


def _finite_or_none(value: float | None) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return value


def build_report(config: ModelConfig, measurements: Measurements, verdicts: dict[str, Verdict],
                 meta: dict[str, Any], decode: Callable[[int | None], str]) -> dict[str, Any]:
    prompts = []
    for p in measurements.prompts:
        dev_first = p.device_tokens[0] if p.device_tokens else None
        ref_first = p.reference_tokens[0] if p.reference_tokens else None
        prompts.append({
            "index": p.index,
            "id": p.id,
            "prompt": p.label,
            "prompt_tokens": p.prompt_tokens,
            "scored_positions": {"count": len(p.positions), "first": min(p.positions, default=None),
                                 "last": max(p.positions, default=None)},
            "device_first_token": {"id": dev_first, "text": decode(dev_first)},
            "reference_first_token": {"id": ref_first, "text": decode(ref_first)},
            "first_token": p.first_status,
            "agreed_prefix": p.prefix_length,
            "continuation_tokens": len(p.reference_tokens),
            "continuation": p.prefix_status,
            "device_text": "".join(decode(t) for t in p.device_tokens),
            "reference_text": "".join(decode(t) for t in p.reference_tokens),
            "metrics": {k: _finite_or_none(v) for k, v in p.metrics.items()},
        })
    return {
        "format": REPORT_FORMAT,
        "model": config.name,
        "model_name": config.model_name,
        "config": str(config.path),
        "hardware": config.hardware,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": all(v.passed for v in verdicts.values()),
        "vocab_size": measurements.vocab_size,
        "positions": meta.get("positions_mode"),
        "max_tokens": meta.get("max_tokens"),
        "checks": [dict(v.as_dict(), value=_finite_or_none(v.value)) for v in verdicts.values()],
        "metrics": {name: {stat: _finite_or_none(v) for stat, v in cells.summary().items()}
                    for name, cells in measurements.cells.items()},
        "prompts": prompts,
        "nonfinite": [vars(b) for b in measurements.nonfinite[:100]],
        "run": meta,
    }
