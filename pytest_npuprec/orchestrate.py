"""One model, end to end: weights -> prompts -> capture (reference, then device) -> verdicts -> report.

Each model is run at most once per pytest session, when its first check needs it; the failure
to run it (missing weights, no device) is kept and raised again for every check of that model.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config.schema import ModelConfig


@dataclass(frozen=True)
class RunOptions:
    device: str  # requested: auto | npu | cuda | cpu
    model_roots: list[Path]
    report_dir: Path
    fault: str | None = None
    # seconds each engine phase may take (start; each generate and score call): --npuprec-timeout, else
    # precision.timeout_s; None = runners.watchdog.DEFAULT_TIMEOUTS_S (start 1800 s, a call 900 s)
    timeout_s: float | None = None


@dataclass
class ModelResult:
    config: ModelConfig
    verdicts: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    report_paths: dict[str, Path] = field(default_factory=dict)
    error: BaseException | None = None

    def describe_error(self) -> str:
        """The message alone for errors the user must fix; the traceback too for anything else (a bug)."""
        assert self.error is not None
        if isinstance(self.error, _user_errors()):
            return str(self.error)
        return "".join(traceback.format_exception(self.error)).rstrip()


def run_model(config: ModelConfig, options: RunOptions) -> ModelResult:
    result = ModelResult(config)
    try:
        _run(config, options, result)
    except Exception as exc:  # kept and reported per check, so every check of the model is red
        result.error = exc
    return result


def _user_errors() -> tuple[type[Exception], ...]:
    from .capture.prompts import PromptError
    from .checkpoints.tensors import CheckpointError
    from .config.loader import ConfigError
    from .runners.converter import ConversionError
    from .runners.device import DeviceRunError
    from .runners.environment import DeviceUnavailableError
    from .standins import UnknownStandinError
    from .checkpoints.locate import WeightsNotFoundError

    return (CheckpointError, ConfigError, ConversionError, DeviceRunError, DeviceUnavailableError, PromptError,
            UnknownStandinError, WeightsNotFoundError)


def _run(config: ModelConfig, options: RunOptions, result: ModelResult) -> None:
    from .capture.prompts import decode_token, load_tokenizer, perplexity_input, render_prompts
    from .capture.session import capture_model
    from .measure.thresholds import measure
    from .report.document import build_report
    from .report.write import write_report
    from .runners.device import Fault, VllmRunner
    from .runners.environment import host_description, package_versions, resolve_device
    from .runners.reference import TransformersRunner
    from .verdicts import judge_all
    from .checkpoints.locate import locate_weights

    precision, checks, serve = config.precision, config.checks, config.serve
    assert precision is not None
    device = resolve_device(options.device)
    fault = Fault.parse(options.fault) if options.fault else None
    if fault is not None and not fault.applies_to(config.name):
        fault = None
    started = time.perf_counter()
    model_path = locate_weights(config, options.model_roots)
    tokenizer = load_tokenizer(model_path, serve.trust_remote_code)
    prompts = render_prompts(config, tokenizer)
    meta = {"model_path": str(model_path), "versions": package_versions(), "host": host_description(),
            "requested_device": options.device}
    verdicts = {}
    if checks.qat_equivalence:  # the device runs the converted checkpoint, once it matches the QAT one
        qat_verdicts, model_path = qat_equivalence(config, options, model_path, prompts)
        verdicts.update(qat_verdicts)
        meta["converted_path"] = str(model_path)
    if checks.ternary_weights:
        from .measure.kinds import measure_ternary
        from .verdicts.kinds import judge_ternary

        verdicts["ternary_weights"] = judge_ternary(config.name, checks.ternary_weights,
                                                    measure_ternary(model_path, checks.ternary_weights))
    extra = [perplexity_input(config, tokenizer, len(prompts))] if checks.perplexity else []
    capture = capture_model(
        config.name, prompts + extra, precision.max_tokens, precision.positions,
        reference=lambda: TransformersRunner(model_path, serve.trust_remote_code),
        device=lambda: VllmRunner(model_path, serve, device, fault, model=config.name, timeout_s=options.timeout_s),
        folder=options.report_dir / "captures" / config.name,
        meta=meta,
        device_runs=checks.determinism.runs if checks.determinism else 1,
    )
    measurements = measure(capture, precision.tie_margin)
    verdicts.update(judge_all(measurements, precision.thresholds))
    verdicts.update(_capture_checks(config, capture, tokenizer))
    result.verdicts = {check_id: verdicts[check_id] for check_id in config.check_ids}  # in test order
    capture.meta["timings"]["total_s"] = round(time.perf_counter() - started, 2)
    result.report = build_report(config, measurements, result.verdicts, capture.meta,
                                 lambda t: decode_token(tokenizer, t))
    result.report_paths = write_report(result.report, options.report_dir)


def qat_equivalence(config: ModelConfig, options: RunOptions, qat_path: Path, prompts: list) -> tuple[dict, Path]:
    """Fake-quant forward of the QAT checkpoint vs its converted form, both transformers FP32 on the CPU."""
    import dataclasses

    from .capture.session import capture_model
    from .measure.thresholds import measure
    from .runners.converter import convert_checkpoint
    from .runners.reference import TransformersRunner
    from .verdicts import judge

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
    label = f"{config.name} QAT fake-quant vs converted (FP32)"
    measured = dataclasses.replace(measure(capture, config.precision.tie_margin), model=label)
    verdicts = {}
    for threshold in check.thresholds:
        check_id = f"qat_equivalence-{threshold.id}"
        verdicts[check_id] = dataclasses.replace(judge(measured, threshold), check_id=check_id, model=config.name)
    return verdicts, converted


def _capture_checks(config: ModelConfig, capture, tokenizer) -> dict:
    """Verdicts of the check kinds read from the main capture."""
    from .capture.prompts import decode_texts
    from .measure.kinds import measure_determinism, measure_labels, measure_perplexity, measure_thinking
    from .verdicts import kinds

    checks = config.checks
    verdicts = {}
    if checks.determinism:
        verdicts["determinism"] = kinds.judge_determinism(config.name, checks.determinism,
                                                          measure_determinism(capture))
    if checks.perplexity:
        verdicts["perplexity"] = kinds.judge_perplexity(config.name, checks.perplexity, measure_perplexity(capture))
    if checks.labels or checks.thinking:
        texts = decode_texts(config, capture, tokenizer)
        if checks.labels:
            verdicts["labels"] = kinds.judge_labels(
                config.name, checks.labels.pattern, measure_labels(texts, checks.labels.pattern, checks.labels.prompts))
        if checks.thinking:
            verdicts["thinking"] = kinds.judge_thinking(config.name, checks.thinking, config.serve.enable_thinking,
                                                        measure_thinking(texts, checks.thinking))
    return verdicts
