"""One model, end to end: locate weights -> render prompts -> capture -> measure -> judge -> report.

Each model is run at most once per pytest session, when its first check needs it; the failure
to run it (missing weights, no device) is kept and raised again for every check of that model.
Nothing here imports torch, transformers or vLLM: the runners load them when an engine starts.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .baselines import session as baselines
from .capture.layouts import layout_side
from .capture.prefix_cache import prefix_cache_inputs
from .capture.prompts import decode_texts, decode_token, load_tokenizer, perplexity_input, render_prompts
from .capture.records import ModelCapture, PromptInput
from .capture.session import capture_model
from .capture.taps import model_taps, supported_taps
from .checkpoints.locate import locate_weights
from .config.schema import ModelConfig, ServeConfig
from .diagnose import diagnose
from .errors import describe
from .measure import Measured
from .measure.kinds import measure_determinism, measure_labels, measure_perplexity, measure_ternary, measure_thinking
from .measure.layouts import measure_parallel_layouts
from .measure.prefix_cache import measure_prefix_cache
from .measure.routing import measure_routing
from .measure.vision import measure_vision
from .measure.steps import GRAPH_MODE, decode_summary, measure_batch_invariance, measure_decode, measure_graph_mode
from .measure.thresholds import Measurements, measure
from .progress import announced, phase
from .report.diagnosis import add_diagnosis
from .report.document import build_report
from .report.figures import figures
from .report.routing import add_routing
from .report.vision import add_vision
from .report.steps import add_decode
from .report.write import write_report
from .runners import decoding
from .runners.converter import convert_checkpoint
from .runners.device import Fault, VllmRunner, finish_closing
from .runners.environment import host_description, package_versions, resolve_device
from .runners.layouts import layout_serve, refuse_unsupported_layouts
from .runners.reference import TransformersRunner
from .runners.reference_memory import reference_runner
from .verdicts import Verdict, judge_checks


@dataclass(frozen=True)
class RunOptions:
    device: str  # requested: auto | npu | cuda | cpu
    model_roots: list[Path]
    report_dir: Path
    fault: str | None = None
    # seconds each engine phase may take (start; each generate and score call): --npuprec-timeout, else
    # precision.timeout_s; a number or {start, call}; None = runners.watchdog.DEFAULT_TIMEOUTS_S (start 1800 s,
    # a call 900 s)
    timeout_s: float | dict[str, float] | None = None
    # --npuprec-reference / --npuprec-baseline-dir / --npuprec-update-baselines (baselines/session.py)
    baselines: baselines.BaselineOptions = field(default_factory=baselines.BaselineOptions)
    diagnose: str = "auto"  # --npuprec-diagnose: auto (on a failing logit check) | always | never (diagnose.py)
    every_tap: bool = False  # capture every tap the checkpoint has, checked or not (--npuprec-calibrate measures all)


@dataclass(frozen=True)
class ModelResult:
    config: ModelConfig
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # check id -> verdict, in test order
    report: dict[str, Any] | None = None
    report_paths: dict[str, Path] = field(default_factory=dict)
    error: BaseException | None = None

    def describe_error(self) -> str:
        """The message alone for errors the user must fix (NpuprecError); the traceback too for a bug."""
        assert self.error is not None
        return describe(self.error)


def run_model(config: ModelConfig, options: RunOptions) -> ModelResult:
    # the last model's engine shut down in the background while it was measured and reported (VllmRunner's
    # close_in_background); it must be gone before this model loads anything
    finish_closing()
    try:
        return _run(config, options)
    except Exception as exc:  # kept and reported per check, so every check of the model is red
        return ModelResult(config, error=exc)


def _run(config: ModelConfig, options: RunOptions) -> ModelResult:
    assert config.precision is not None
    device = resolve_device(options.device)  # first: a device that is not there fails before anything slow
    refuse_unsupported_layouts(config, device)  # and a layout this platform cannot run
    started = time.perf_counter()

    model_path = locate_weights(config, options.model_roots)
    tokenizer = load_tokenizer(model_path, config.serve.trust_remote_code)
    prompts = render_prompts(config, tokenizer, model_path)

    # a QAT checkpoint is converted (and its two forms compared) first; the device runs the converted one
    qat, device_path = (measure_qat_equivalence(config, options, model_path, prompts)
                        if config.checks.qat_equivalence else (None, model_path))
    meta = {"model_path": str(model_path), "versions": package_versions(), "host": host_description(),
            "requested_device": options.device, "decoding": decoding.describe(device_path),
            **({"converted_path": str(device_path)} if device_path != model_path else {})}
    inputs = prompts + ([perplexity_input(config, tokenizer, len(prompts))] if config.checks.perplexity else [])
    inputs += prefix_cache_inputs(config, tokenizer, prompts, len(inputs))
    baseline = baselines.open_session(config, options.baselines, device_path, inputs)  # live or baseline, and why
    meta["reference_source"] = baseline.source_doc()
    capture = _capture(config, options, device, device_path, inputs, meta, baseline)

    with phase(config.name, "measure"):
        measured = _measure(config, capture, tokenizer, device_path, qat)
    verdicts = judge_checks(config, measured, baselines.judge_drift(baseline, measured.thresholds, capture))
    if options.baselines.update:
        capture.meta["baseline_update"] = baselines.update(baseline, capture, measured.thresholds, verdicts)

    diagnosis = diagnose(config, options, device_path, capture, measured.thresholds, verdicts,
                         lambda serve: _engine(config, options, device, device_path, serve),
                         {p.index: p.images for p in prompts if p.images})
    capture.meta["timings"]["total_s"] = round(time.perf_counter() - started, 2)
    report = build_report(config, measured.thresholds, verdicts, capture.meta, lambda t: decode_token(tokenizer, t))
    if diagnosis is not None:
        add_diagnosis(report, diagnosis)
    if measured.decode is not None:
        add_decode(report, measured.decode, decode_summary(capture, measured.decode))
    if measured.routing is not None:
        add_routing(report, measured.routing)
    if measured.vision is not None:
        add_vision(report, measured.vision, lambda index: measured.thresholds.prompt(index).id)
    report["figures"] = figures(capture, measured.thresholds, measured.decode, lambda t: decode_token(tokenizer, t))
    return ModelResult(config, verdicts, report, write_report(report, options.report_dir))


def _capture(config: ModelConfig, options: RunOptions, device: str, model_path: Path, inputs: list[PromptInput],
             meta: dict[str, Any], baseline: baselines.BaselineSession) -> ModelCapture:
    """The FP32 reference (live, or replayed from a baseline), then the device engine, on the same token ids
    (the perplexity text too)."""
    precision, checks, serve = config.precision, config.checks, config.serve
    assert precision is not None

    def engine(serve_as: ServeConfig) -> Callable[[], VllmRunner]:
        return _engine(config, options, device, model_path, serve_as)

    variants = {}
    if checks.graph_mode:  # the same device with enforce_eager flipped: a second engine, started after the first
        variants[GRAPH_MODE] = announced(engine(dataclasses.replace(serve, enforce_eager=not serve.enforce_eager)),
                                         config.name, f"device ({GRAPH_MODE})")
    layouts = {layout_side(i): announced(engine(layout_serve(serve, layout, device)), config.name,
                                         f"device ({layout.label})")
               for i, layout in enumerate(checks.parallel_layouts.layouts if checks.parallel_layouts else ())}
    return capture_model(
        config.name, inputs, precision.max_tokens, precision.positions,
        reference=announced(baseline.reference_factory(
            lambda: reference_runner(model_path, serve.trust_remote_code, precision.reference_memory)),
            config.name, "reference"),
        device=announced(engine(serve), config.name, "device"),
        folder=options.report_dir / "captures" / config.name,
        meta=meta,
        device_runs=checks.determinism.runs if checks.determinism else 1,
        steps=bool(config.decode_thresholds or checks.batch_invariance or checks.graph_mode or layouts),
        batch_passes=checks.batch_invariance is not None, variants=variants,
        taps=supported_taps(model_path) if options.every_tap else model_taps(config, model_path),
        reference_scoring=precision.reference_scoring, layouts=layouts,
    )


def _engine(config: ModelConfig, options: RunOptions, device: str, model_path: Path,
            serve: ServeConfig) -> Callable[[], VllmRunner]:
    """The factory of a device engine serving `serve`, with the session's fault if it applies to this model."""
    fault = Fault.parse(options.fault) if options.fault else None
    if fault is not None and not fault.applies_to(config.name):
        fault = None
    return lambda: VllmRunner(model_path, serve, device, fault, model=config.name, timeout_s=options.timeout_s,
                              close_in_background=True)


def _measure(config: ModelConfig, capture: ModelCapture, tokenizer: Any, model_path: Path,
             qat: Measurements | None) -> Measured:
    """What every check of the model is judged on (measure/)."""
    assert config.precision is not None
    checks = config.checks
    texts = decode_texts(config, capture, tokenizer) if checks.labels or checks.thinking else []
    prefill = measure(capture, config.precision.tie_margin)
    return Measured(
        thresholds=prefill,
        decode=measure_decode(capture, prefill) if config.decode_thresholds else None,
        batch_invariance=measure_batch_invariance(capture) if checks.batch_invariance else None,
        graph_mode=measure_graph_mode(capture) if checks.graph_mode else None,
        prefix_cache=measure_prefix_cache(capture, config.precision.tie_margin) if checks.prefix_cache else None,
        parallel_layouts=(measure_parallel_layouts(capture, checks.parallel_layouts, config.precision, config.serve)
                          if checks.parallel_layouts else None),
        qat_equivalence=qat,
        ternary_weights=measure_ternary(model_path, checks.ternary_weights) if checks.ternary_weights else None,
        determinism=measure_determinism(capture) if checks.determinism else None,
        perplexity=measure_perplexity(capture) if checks.perplexity else None,
        labels=measure_labels(texts, checks.labels) if checks.labels else None,
        thinking=(measure_thinking(texts, checks.thinking, config.serve.enable_thinking) if checks.thinking
                  else None),
        routing=measure_routing(capture, config.precision.routing_tie_margin),
        vision=measure_vision(capture),
    )


def measure_qat_equivalence(config: ModelConfig, options: RunOptions, qat_path: Path,
                            prompts: list[PromptInput]) -> tuple[Measurements, Path]:
    """Convert the QAT checkpoint, then measure its fake-quant forward (reference side) against the converted
    checkpoint (device side), both transformers FP32 on the CPU. Returns the measurements and the converted path."""
    check = config.checks.qat_equivalence
    assert check is not None and config.precision is not None
    converted = convert_checkpoint(check, qat_path, options.report_dir / "converted" / config.name)
    trust = config.serve.trust_remote_code
    capture = capture_model(
        f"{config.name} (QAT)", prompts, config.precision.max_tokens, config.precision.positions,
        reference=lambda: TransformersRunner(qat_path, trust),
        device=lambda: TransformersRunner(converted, trust),
        folder=options.report_dir / "captures" / f"{config.name}-qat",
    )
    return measure(capture, config.precision.tie_margin), converted
