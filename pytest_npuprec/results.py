"""Running models for a pytest session: each at most once, shared by the YAML items and the
`npuprec_result` fixture; where CI looks (GitHub step summary, JUnit properties).

Nothing heavy is imported at module level: vLLM and torch load only when a model runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import options

if TYPE_CHECKING:
    import numpy as np

    from .capture.records import ModelCapture
    from .config.schema import ModelConfig
    from .orchestrate import ModelResult, RunOptions
    from .verdicts import Verdict

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
_runs_key = pytest.StashKey["Runs"]()


class PrecisionResult:
    """A model's result: verdicts per check id, the report (the JSON's dict), and the captures as arrays.

    `error` is set (and `verdicts` empty) when the model could not run."""

    def __init__(self, result: "ModelResult", capture_dir: Path):
        self.result = result
        self.capture_dir = capture_dir
        self._capture: ModelCapture | None = None

    config = property(lambda self: self.result.config)
    verdicts = property(lambda self: self.result.verdicts)
    report = property(lambda self: self.result.report)
    report_paths = property(lambda self: self.result.report_paths)
    error = property(lambda self: self.result.error)

    @property
    def passed(self) -> bool:
        """The model ran and no check failed (a skipped check, one that compared nothing, is no failure)."""
        return self.error is None and not any(v.failed for v in self.verdicts.values())

    @property
    def capture(self) -> "ModelCapture":
        """The capture record: per prompt the token ids, scored positions, greedy outputs and logits files."""
        if self._capture is None:
            if self.error is not None:
                raise RuntimeError(f"{self.config.name}: no capture, the model did not run: {self.error}")
            from .capture.records import load_capture

            self._capture = load_capture(self.capture_dir)
        return self._capture

    @property
    def captures(self) -> "dict[str, dict[str, np.ndarray]]":
        """prompt id -> side ("reference", "device", "device-run2", ...) -> float32 logits [positions x vocab],
        memory-mapped; row k predicts the token after position `capture.prompts[i].positions[k]`."""
        return {p.prompt.id: {side: p.logits(side) for side in p.logits_files} for p in self.capture.prompts}


class Runs:
    """The models run in this session, by config name."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.results: dict[str, ModelResult] = {}

    def options_for(self, model: "ModelConfig") -> "RunOptions":
        from .baselines.session import BaselineOptions
        from .orchestrate import RunOptions

        cli = self.config.getoption("npuprec_timeout")
        timeout = cli if cli is not None else (model.precision.timeout_s if model.precision else None)
        return RunOptions(device=options.device(self.config), model_roots=options.model_roots(self.config),
                          report_dir=options.report_dir(self.config), fault=self.config.getoption("npuprec_fault"),
                          timeout_s=timeout, diagnose=self.config.getoption("npuprec_diagnose") or "auto",
                          baselines=BaselineOptions(options.reference(self.config), options.baseline_dir(self.config),
                                                    self.config.getoption("npuprec_update_baselines"),
                                                    options.require_records(self.config)))

    def get(self, model: "ModelConfig") -> "ModelResult":
        if model.name not in self.results:
            run_options = self.options_for(model)
            self.results[model.name] = result = execute(model, run_options)
            append_step_summary(result)
        return self.results[model.name]

    def result(self, model: "ModelConfig") -> PrecisionResult:
        result = self.get(model)
        return PrecisionResult(result, options.report_dir(self.config) / "captures" / model.name)


def runs(config: pytest.Config) -> Runs:
    if _runs_key not in config.stash:
        config.stash[_runs_key] = Runs(config)
    return config.stash[_runs_key]


def execute(model: "ModelConfig", run_options: "RunOptions") -> "ModelResult":
    """Check the serve keys against the installed vLLM, then run the model (orchestrate.run_model)."""
    from . import orchestrate
    from .config import engine_args
    from .config.loader import ConfigError
    from .env_vars import temporary_env

    try:
        with temporary_env(model.envs):  # vLLM may read its environment on first import, as the engine would
            engine_args.check_engine_args(model)
    except ConfigError as exc:
        return orchestrate.ModelResult(model, error=exc)
    return orchestrate.run_model(model, run_options)


def append_step_summary(result: "ModelResult") -> None:
    """Append the model's Markdown report to $GITHUB_STEP_SUMMARY (never overwriting what is there)."""
    target = os.environ.get(STEP_SUMMARY_ENV)
    if not target:
        return
    if result.report is not None:
        from .report.render import render_markdown

        text = render_markdown(result.report)
    else:
        text = f"## {result.config.name}: not run\n\n```\n{result.describe_error()}\n```\n"
    with open(target, "a", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n\n")


def _number(value: Any) -> str:
    from .report.numbers import words

    return words(value) if isinstance(value, float) or value is None else str(value)


def record_verdict(properties: list[tuple[str, object]], verdict: "Verdict") -> None:
    """The check's numbers as JUnit properties: measured value, bound, worst prompt and position."""
    t = verdict.threshold
    properties.append(("passed", str(verdict.passed).lower()))
    if verdict.skipped is not None:
        properties.append(("skipped", verdict.skipped))
    if verdict.value is not None:
        properties.append(("value", _number(verdict.value)))
    if t is not None:
        properties.extend([("bound", t.bound), ("threshold", _number(t.value)), ("reduce", t.reduce)])
    elif verdict.bound_text:
        properties.append(("bound", verdict.bound_text))
    worst = verdict.worst or {}
    for key, name in (("prompt_id", "worst_prompt"), ("position", "worst_position"), ("value", "worst_value")):
        if worst.get(key) is not None:
            properties.append((name, _number(worst[key])))
    if verdict.n_values:
        properties.extend([("n_values", str(verdict.n_values)), ("n_failing", str(verdict.n_failing))])


def load_model(config: pytest.Config, name: str) -> "ModelConfig":
    """A model config of the config folder by file stem, model_name or its last part."""
    from .config.loader import ConfigError, load_config
    from .selection import SelectionError, resolve, scan

    config_dir = options.config_dir(config)
    try:
        entries = scan(config_dir)
        stems = resolve(entries, [name], config_dir, explicit=True)
        if len(stems) != 1:
            raise SelectionError(f"expected one model name, got {name!r} ({len(stems)} configs)")
        model = load_config(entries[stems[0]].path)
    except (SelectionError, ConfigError) as exc:
        pytest.fail(f"npuprec_result({name!r}): {exc}", pytrace=False)
    if model.precision is None:
        pytest.fail(f"npuprec_result({name!r}): {model.path}: no precision section", pytrace=False)
    return model


__all__ = ["PrecisionResult", "Runs", "append_step_summary", "execute", "record_verdict", "runs"]
