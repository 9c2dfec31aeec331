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
    from .config.loader import ConfigError
    from .runners.device import DeviceRunError
    from .runners.environment import DeviceUnavailableError
    from .standins import UnknownStandinError
    from .weights import WeightsNotFoundError

    return (ConfigError, DeviceRunError, DeviceUnavailableError, PromptError, UnknownStandinError,
            WeightsNotFoundError)


def _run(config: ModelConfig, options: RunOptions, result: ModelResult) -> None:
    from .capture.prompts import decode_token, load_tokenizer, render_prompts
    from .capture.session import capture_model
    from .compare import measure
    from .report.document import build_report
    from .report.write import write_report
    from .runners.device import Fault, VllmRunner
    from .runners.environment import host_description, package_versions, resolve_device
    from .runners.reference import TransformersRunner
    from .verdicts import judge_all
    from .weights import locate_weights

    assert config.precision is not None
    device = resolve_device(options.device)
    fault = Fault.parse(options.fault) if options.fault else None
    started = time.perf_counter()
    model_path = locate_weights(config, options.model_roots)
    tokenizer = load_tokenizer(model_path, config.serve.trust_remote_code)
    prompts = render_prompts(config, tokenizer)
    meta = {"model_path": str(model_path), "versions": package_versions(), "host": host_description(),
            "requested_device": options.device}
    capture = capture_model(
        config.name, prompts, config.precision.max_tokens, config.precision.positions,
        reference=lambda: TransformersRunner(model_path, config.serve.trust_remote_code),
        device=lambda: VllmRunner(model_path, config.serve, device, fault),
        folder=options.report_dir / "captures" / config.name,
        meta=meta,
    )
    measurements = measure(capture, config.precision.tie_margin)
    result.verdicts = judge_all(measurements, config.precision.thresholds)
    capture.meta["timings"]["total_s"] = round(time.perf_counter() - started, 2)
    result.report = build_report(config, measurements, result.verdicts, capture.meta,
                                 lambda t: decode_token(tokenizer, t))
    result.report_paths = write_report(result.report, options.report_dir)
