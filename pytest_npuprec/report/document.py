"""The report of one model as a plain, JSON-ready dict: everything the table shows, and more."""
from __future__ import annotations

import datetime as _dt
from typing import Any, Callable

from ..config.schema import ModelConfig
from ..measure.thresholds import Measurements
from ..verdicts import Verdict
from .numbers import encode

REPORT_FORMAT = 1


def _check(v: Verdict) -> dict[str, Any]:
    doc = dict(v.as_dict(), value=encode(v.value))
    if doc.get("worst"):
        doc["worst"] = {k: encode(x) for k, x in doc["worst"].items()}
    return doc


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
            "metrics": {k: encode(v) for k, v in p.metrics.items()},
        })
    return {
        "format": REPORT_FORMAT,
        "model": config.name,
        "model_name": config.model_name,
        "config": str(config.path),
        "hardware": config.hardware,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": not any(v.failed for v in verdicts.values()),  # skipped checks (nothing compared) are listed
        "skipped": [v.check_id for v in verdicts.values() if v.skipped is not None],
        "vocab_size": measurements.vocab_size,
        "positions": meta.get("positions_mode"),
        "max_tokens": meta.get("max_tokens"),
        "checks": [_check(v) for v in verdicts.values()],
        "metrics": {name: {stat: encode(v) for stat, v in cells.summary().items()}
                    for name, cells in measurements.cells.items()},
        "prompts": prompts,
        "nonfinite": [vars(b) for b in measurements.nonfinite[:100]],
        "run": meta,
    }
