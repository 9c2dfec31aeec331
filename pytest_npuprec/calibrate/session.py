"""One model's calibration: the device run against a live FP32 reference, the BF16 floor against that same
reference, bounds from the floor (every metric the model has: the logits' and its taps', calibrate/taps.py), the
refusal, drift tolerances from repeated device runs (calibrate/drift.py), and the rewrite of the model's YAML."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import NpuprecError, describe
from .bounds import (DEFAULT_LAYOUT, Bound, Resolution, Summary, badness, calibrate, calibrated_max_ratio,
                     ratio_refusal, refusals, worst_reduce)
from .drift import DriftProposal
from .taps import TAP_METRICS
from .yaml_doc import CALIBRATED_MARK, DRIFT_MARK, ConfigDocument


class CalibrationError(NpuprecError):
    """A model that could not be calibrated (it did not run, or the result would not load)."""


@dataclass
class Calibration:
    model: str
    path: Path
    factor: float
    floor: Summary = field(default_factory=dict)
    device: Summary = field(default_factory=dict)
    layout: tuple[tuple[str, str], ...] = ()
    bounds: list[Bound] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why the device's figures were not turned into bounds
    forced: bool = False
    written: bool = False
    added_precision: bool = False
    comment: list[str] = field(default_factory=list)
    # (floor ratio, device ratio, max_ratio written) of the perplexity check, when the config has one
    perplexity: tuple[float, float, str] | None = None
    resolution: Resolution = field(default_factory=dict)  # of the tap metrics (calibrate/taps.py)
    tie_margins: dict[str, tuple[str, str]] = field(default_factory=dict)  # precision key -> (value, how), written
    drift: DriftProposal | None = None
    error: BaseException | None = None

    @property
    def message(self) -> str:
        if self.error is not None:
            return f"{self.model}: not calibrated: {describe(self.error)}"
        if self.refused and not self.written:
            return (f"{self.model}: REFUSED to write bounds to {self.path}: the device is already outside the BF16 "
                    f"noise floor by more than the factor {self.factor:g}, and bounds from it would bake its error "
                    "into the gate: " + "; ".join(self.refused)
                    + ". Fix the device, or accept it with --npuprec-calibrate-force")
        added = " (and a default precision: section)" if self.added_precision else ""
        forced = f" (forced past: {'; '.join(self.refused)})" if self.forced else ""
        written = ", ".join(["precision.thresholds", *(f"precision.{k}" for k in self.tie_margins),
                             *(["precision.drift"] if self.drift and self.drift.tolerances else [])])
        notes = "".join(f"; {n}" for n in self.drift.notes) if self.drift else ""
        return f"{self.model}: wrote {written}{added} to {self.path}{forced}{notes}"


def summaries(capture: Any, tie_margin: float | None) -> Summary:
    from ..measure.thresholds import measure

    return {name: cells.summary() for name, cells in measure(capture, tie_margin).cells.items()}


def layout_of(config: Any, taps: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """The (metric, reduce) bounds to write: those the config has (prefill), else the default layout; and for each
    tap the model has, its default bounds of the metrics the config does not bound yet."""
    have = tuple(dict.fromkeys((t.metric, t.reduce) for t in config.thresholds)) or DEFAULT_LAYOUT
    bounded = {metric for metric, _ in have}
    return have + tuple(pair for tap in taps for pair in TAP_METRICS[tap].layout if pair[0] not in bounded)


def tie_margins(floor: Any, taps: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """precision key -> (value, how) of each tap's tie margin calibrated from the floor (e.g. routing_tie_margin);
    a tap without one, or whose floor gives no figure, keeps the config's."""
    out = {}
    for spec in map(TAP_METRICS.get, taps):
        made = spec.tie_margin(floor) if spec.tie_key and spec.tie_margin else None
        if made is not None:
            out[str(spec.tie_key)] = made
    return out


def tap_figures(capture: Any, taps: tuple[str, ...], margins: dict[str, float | None]) -> tuple[Summary, Resolution]:
    """The tap metrics' summaries and resolutions of one capture (each tap with its tie margin)."""
    summary: Summary = {}
    resolution: Resolution = {}
    for tap in taps:
        spec = TAP_METRICS[tap]
        figures = spec.figures(capture, margins.get(spec.tie_key) if spec.tie_key else None)
        if figures is None:
            raise CalibrationError(f"the {tap} capture holds no comparable rows; its metrics cannot be calibrated")
        summary.update(figures.summary)
        resolution.update(figures.resolution)
    return summary, resolution


def decode_bounds_as_written(text: str) -> dict[str, list[dict[str, Any]]]:
    """precision.thresholds entries with `phase: decode`, carried over unchanged (calibration measures prefill)."""
    import yaml

    raw = (yaml.safe_load(text) or {}).get("precision") or {}
    kept: dict[str, list[dict[str, Any]]] = {}
    for metric, spec in (raw.get("thresholds") or {}).items():
        for entry in spec if isinstance(spec, list) else [spec]:
            if isinstance(entry, dict) and entry.get("phase") == "decode":
                kept.setdefault(metric, []).append(entry)
    return kept


def comment_lines(cal: Calibration, capture_meta: dict[str, Any]) -> list[str]:
    from ..baselines.device_records import describe as describe_hw, hardware

    versions = {k: v for k, v in (capture_meta.get("versions") or {}).items() if v}
    hw = hardware(str((capture_meta.get("device") or {}).get("platform", "?")), versions)
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"{CALIBRATED_MARK} (--npuprec-calibrate) on {today}, host {platform.node()} ({describe_hw(hw)})",
        "with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ":",
        f"bound = noise floor x {cal.factor:g} (on 1 - value for similarities and agreements), rounded outwards;",
        f"floor = transformers BF16 vs FP32, device = {describe_hw(hw)} vs FP32; mean (worst):",
    ]
    for metric in dict.fromkeys(m for m, _ in cal.layout):
        worst = worst_reduce(metric)
        f, d = cal.floor.get(metric, {}), cal.device.get(metric, {})
        lines.append(f"  {metric}: floor {_fig(f.get('mean'))} ({_fig(f.get(worst))}), "
                     f"device {_fig(d.get('mean'))} ({_fig(d.get(worst))})")
    for key, (value, how) in cal.tie_margins.items():
        lines.append(f"  {key} {value}: {how}")
    floored = [f"{m} {r}" for m, r in cal.layout if cal.resolution.get((m, r), 0.0)
               > cal.factor * badness(m, cal.floor.get(m, {}).get(r, math.nan))]
    if floored:
        lines.append(f"  {', '.join(floored)}: one event of the count measured (a route of n: 1/n), as floor x "
                     f"{cal.factor:g} is less")
    if cal.perplexity is not None:
        f, d, bound = cal.perplexity
        lines.append(f"  perplexity ratio (device / FP32): floor {_fig(f)}, device {_fig(d)} -> "
                     f"checks.perplexity.max_ratio {bound}")
    if cal.forced:
        lines.append("written with --npuprec-calibrate-force past: " + "; ".join(cal.refused))
    return lines


def _fig(value: float | None) -> str:
    return "-" if value is None else (f"{value:.6g}" if math.isfinite(value) else str(value))


def calibrate_model(path: Path, options_for: Callable[[Any], Any], factor: float, force: bool,
                    device_runs: int = 1) -> Calibration:
    """Calibrate the model of one YAML (`options_for(config)`: the session's RunOptions for it); the YAML is
    rewritten only when bounds were produced (not refused). `device_runs` >= 2: drift tolerances proposed too."""
    cal = Calibration(model=Path(path).stem, path=Path(path), factor=factor)
    try:
        _calibrate(cal, options_for, force, device_runs)
    except Exception as exc:  # kept and shown by the model's item
        cal.error = exc
    return cal


def with_device_runs(config: Any, runs: int) -> Any:
    """The config whose device runs `runs` times in its engine (the determinism check's repeats), for the spread."""
    from ..config.schema import DeterminismCheck

    checks = config.precision.checks
    have = checks.determinism
    if runs < 2 or (have is not None and have.runs >= runs):
        return config
    determinism = dataclasses.replace(have, runs=runs) if have is not None else DeterminismCheck(runs=runs)
    precision = dataclasses.replace(config.precision, checks=dataclasses.replace(checks, determinism=determinism))
    return dataclasses.replace(config, precision=precision)


def _with_media(config: Any, capture: Any) -> list[Any] | None:
    """The capture's inputs with their images / sounds, rendered again from the config (a capture read back from
    disk keeps only their sha256): the floor's BF16 side needs them. None when no prompt has any."""
    if not any(p.prompt.media_positions for p in capture.prompts):
        return None
    from ..capture.prompts import load_tokenizer, render_prompts
    from .floor import model_path

    path = model_path(capture)
    media = {p.index: p.images for p in render_prompts(config, load_tokenizer(path, config.serve.trust_remote_code),
                                                       path) if p.images}
    return [dataclasses.replace(p.prompt, images=media.get(p.prompt.index, ())) for p in capture.prompts]


def _calibrate(cal: Calibration, options_for: Callable[[Any], Any], force: bool, device_runs: int = 1) -> None:
    from ..baselines.session import BaselineOptions
    from ..capture.prompts import load_tokenizer
    from ..capture.records import load_capture
    from ..checkpoints.locate import locate_weights
    from ..config.loader import load_config
    from ..results import execute
    from ..runners.device import finish_closing
    from .defaults import default_precision
    from .floor import capture_floor
    from .taps import captured_taps

    doc = ConfigDocument(cal.path)
    config = load_config(cal.path, require_thresholds=False)
    run_options = options_for(config)
    if config.precision is None:
        tokenizer = load_tokenizer(locate_weights(config, run_options.model_roots), config.serve.trust_remote_code)
        doc.add_precision(default_precision(tokenizer),
                          ["precision: added by pytest-npuprec --npuprec-calibrate (default prompts; edit freely)"])
        config = load_config(cal.path, text=doc.text, require_thresholds=False)
        cal.added_precision = True
    assert config.precision is not None
    live = dataclasses.replace(run_options, baselines=BaselineOptions("live", run_options.baselines.folder, False),
                               every_tap=True)
    # the device vs a live FP32 reference, as a plain run, with every tap the model has (and repeated for drift)
    result = execute(with_device_runs(config, device_runs), live)
    if result.error is not None:
        raise CalibrationError(f"the device run failed: {result.describe_error()}")
    capture = load_capture(run_options.report_dir / "captures" / config.name)
    taps = captured_taps(capture)
    cal.device = summaries(capture, config.precision.tie_margin)
    finish_closing()  # the engine is gone before the BF16 model loads
    floor = capture_floor(capture, config.serve.trust_remote_code,
                          run_options.report_dir / "captures" / f"{config.name}-floor", taps=taps,
                          prompts=_with_media(config, capture))
    cal.floor = summaries(floor, config.precision.tie_margin)
    cal.tie_margins = tie_margins(floor, taps)
    margins = {spec.tie_key: float(cal.tie_margins[spec.tie_key][0]) if spec.tie_key in cal.tie_margins
               else getattr(config.precision, spec.tie_key) for spec in map(TAP_METRICS.get, taps) if spec.tie_key}
    device_taps, _ = tap_figures(capture, taps, margins)
    floor_taps, cal.resolution = tap_figures(floor, taps, margins)
    cal.device.update(device_taps)
    cal.floor.update(floor_taps)
    cal.layout = layout_of(config, taps)
    cal.refused = refusals(cal.layout, cal.floor, cal.device, cal.factor, cal.resolution)
    ratios = None
    if config.checks.perplexity is not None:  # its text was scored by both: the ratio's floor gives max_ratio
        from ..measure.kinds import measure_perplexity

        ratios = measure_perplexity(floor).ratio, measure_perplexity(capture).ratio
        cal.perplexity = (*ratios, "-")  # the bound once it is made
        refused = ratio_refusal(*ratios, cal.factor)
        cal.refused.extend([refused] if refused else [])
    finite = result.verdicts.get("finite_logits")
    if finite is not None and not finite.passed:
        cal.refused.insert(0, finite.message)
    if cal.refused and not force:
        return
    cal.bounds = calibrate(cal.layout, cal.floor, cal.factor, cal.resolution)  # a non-finite floor: an error, even forced
    if ratios is not None:
        cal.perplexity = (*ratios, calibrated_max_ratio(ratios[0], cal.factor))
    cal.forced = bool(cal.refused)
    cal.comment = comment_lines(cal, capture.meta)
    if ratios is not None:
        doc.set_scalar(("precision", "checks", "perplexity", "max_ratio"), cal.perplexity[2])
    new_keys = {}
    for key, (value, _) in cal.tie_margins.items():  # in place where the file has the key, else beside the bounds
        if key in doc.precision_keys():
            doc.set_scalar(("precision", key), value)
        else:
            new_keys[key] = value
    doc.set_thresholds(cal.bounds, cal.comment, keep=decode_bounds_as_written(doc.text), scalars=new_keys)
    cal.drift = drift_proposal(config, capture, cal, run_options, device_runs)
    if cal.drift.tolerances:
        doc.set_drift(merged_drift(doc.text, cal.drift.tolerances), [DRIFT_MARK + " (--npuprec-calibrate-runs)",
                                                                     *cal.drift.comment(cal.factor)])
    load_config(cal.path, text=doc.text)  # what is written must load as a plain run's config
    doc.write()
    cal.written = True


def drift_metrics(config: Any, layout: tuple[tuple[str, str], ...]) -> list[str]:
    """The metrics drift tolerances are proposed for: those the config's drift block has, else the logit metrics
    of the bounds (drift compares means of the device records: baselines/drift.py FLOOR)."""
    from ..baselines.drift import FLOOR
    from ..metrics.registry import METRICS

    have = [d.metric for d in config.precision.drift]
    return have or [m for m in dict.fromkeys(m for m, _ in layout) if m in FLOOR and METRICS[m].per == "position"]


def drift_proposal(config: Any, capture: Any, cal: Calibration, run_options: Any, runs: int) -> DriftProposal:
    """The spread of each drift metric's mean over the device runs, the tolerances from it, and whether a device
    record exists for drift to compare with."""
    from ..baselines import update_command
    from ..baselines.device_records import describe as describe_hw, hardware, read_records, same_hardware
    from ..capture.records import repeat_side
    from ..measure.thresholds import measure
    from .drift import propose

    metrics = drift_metrics(config, cal.layout)
    means: dict[str, list[float]] = {m: [] for m in metrics}
    for run in range(1, (runs if runs >= 2 else 1) + 1):
        cells = measure(capture, config.precision.tie_margin, side=repeat_side(run)).cells
        for metric in metrics:
            means[metric].append(float(cells[metric].summary()["mean"]) if metric in cells else math.nan)
    proposal = propose(means, cal.factor)
    if runs >= 2:
        folder = run_options.baselines.folder
        hw = hardware(str((capture.meta.get("device") or {}).get("platform", "?")), capture.meta.get("versions") or {})
        records = read_records(folder / config.name)[0] if folder is not None else []
        if not any(same_hardware(d["hardware"], hw) for _, d in records):
            where = f"under {folder / config.name}" if folder is not None else "(no baseline folder is set)"
            proposal.notes.append(f"no device record for {describe_hw(hw)} {where} yet: drift checks are skipped "
                                  f"(not compared) until one is recorded: {update_command(config.name)}")
    return proposal


def merged_drift(text: str, tolerances: dict[str, str]) -> dict[str, str]:
    """The drift block as written, with the proposed tolerances replacing those of the same metrics."""
    import yaml

    raw = ((yaml.safe_load(text) or {}).get("precision") or {}).get("drift") or {}
    out = {str(k): (str(v) if isinstance(v, str) else repr(v)) for k, v in raw.items()}
    out.update(tolerances)
    return out
