"""One model's calibration: the device run against a live FP32 reference, the BF16 floor against that same
reference, bounds from the floor, the refusal, and the rewrite of the model's YAML."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import NpuprecError, describe
from .bounds import (DEFAULT_LAYOUT, Bound, Summary, calibrate, calibrated_max_ratio, ratio_refusal, refusals,
                     worst_reduce)
from .yaml_doc import CALIBRATED_MARK, ConfigDocument


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
        return f"{self.model}: wrote precision.thresholds{added} to {self.path}{forced}"


def summaries(capture: Any, tie_margin: float | None) -> Summary:
    from ..measure.thresholds import measure

    return {name: cells.summary() for name, cells in measure(capture, tie_margin).cells.items()}


def layout_of(config: Any) -> tuple[tuple[str, str], ...]:
    """The (metric, reduce) bounds to write: those the config has (prefill), else the default layout."""
    have = tuple(dict.fromkeys((t.metric, t.reduce) for t in config.thresholds))
    return have or DEFAULT_LAYOUT


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
    if cal.perplexity is not None:
        f, d, bound = cal.perplexity
        lines.append(f"  perplexity ratio (device / FP32): floor {_fig(f)}, device {_fig(d)} -> "
                     f"checks.perplexity.max_ratio {bound}")
    if cal.forced:
        lines.append("written with --npuprec-calibrate-force past: " + "; ".join(cal.refused))
    return lines


def _fig(value: float | None) -> str:
    return "-" if value is None else (f"{value:.6g}" if math.isfinite(value) else str(value))


def calibrate_model(path: Path, options_for: Callable[[Any], Any], factor: float, force: bool) -> Calibration:
    """Calibrate the model of one YAML (`options_for(config)`: the session's RunOptions for it); the YAML is
    rewritten only when bounds were produced (not refused)."""
    cal = Calibration(model=Path(path).stem, path=Path(path), factor=factor)
    try:
        _calibrate(cal, options_for, force)
    except Exception as exc:  # kept and shown by the model's item
        cal.error = exc
    return cal


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


def _calibrate(cal: Calibration, options_for: Callable[[Any], Any], force: bool) -> None:
    from ..baselines.session import BaselineOptions
    from ..capture.prompts import load_tokenizer
    from ..capture.records import load_capture
    from ..checkpoints.locate import locate_weights
    from ..config.loader import load_config
    from ..results import execute
    from ..runners.device import finish_closing
    from .defaults import default_precision
    from .floor import capture_floor

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
    live = dataclasses.replace(run_options, baselines=BaselineOptions("live", run_options.baselines.folder, False))
    result = execute(config, live)  # the device vs a live FP32 reference, as a plain run
    if result.error is not None:
        raise CalibrationError(f"the device run failed: {result.describe_error()}")
    capture = load_capture(run_options.report_dir / "captures" / config.name)
    cal.device = summaries(capture, config.precision.tie_margin)
    finish_closing()  # the engine is gone before the BF16 model loads
    floor = capture_floor(capture, config.serve.trust_remote_code,
                          run_options.report_dir / "captures" / f"{config.name}-floor",
                          prompts=_with_media(config, capture))
    cal.floor = summaries(floor, config.precision.tie_margin)
    cal.layout = layout_of(config)
    cal.refused = refusals(cal.layout, cal.floor, cal.device, cal.factor)
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
    cal.bounds = calibrate(cal.layout, cal.floor, cal.factor)  # a non-finite floor is an error, even with force
    if ratios is not None:
        cal.perplexity = (*ratios, calibrated_max_ratio(ratios[0], cal.factor))
    cal.forced = bool(cal.refused)
    cal.comment = comment_lines(cal, capture.meta)
    if ratios is not None:
        doc.set_scalar(("precision", "checks", "perplexity", "max_ratio"), cal.perplexity[2])
    doc.set_thresholds(cal.bounds, cal.comment, keep=decode_bounds_as_written(doc.text))
    load_config(cal.path, text=doc.text)  # what is written must load as a plain run's config
    doc.write()
    cal.written = True
