"""pytest-npuprec: options, the `npu` marker, collection of model configs and the `npuprec_result` fixture.

This module stays thin and imports nothing heavy: torch, transformers and vLLM are imported
only when a model actually runs, so `pytest --help` and the unit tests never load them.

A config is enough: `pytest -m npu --model NAME` collects tests/e2e/models/configs/NAME.yaml
itself (collect.py) and runs one test per check, `test_precision[NAME-<check>]`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from . import closing, collect, early_args, options
from .options import DEFAULT_CONFIG_DIR, DEFAULT_MODEL  # noqa: F401  (public names)

if TYPE_CHECKING:
    from .config.schema import ModelConfig
    from .results import PrecisionResult


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Any:
    # `--npuprec-changed-files -` reads stdin now, before pytest's output capture takes it away.
    collect.read_stdin_early(early_config)
    # `--npuprec-config-dir /x`: pytest took /x for a path to test and may have moved its rootdir there
    early_args.repair(early_config, parser, args)
    # Short forms (--model, --device, ...) only after the root conftests and those of the command-line
    # paths had their say, and only where nobody holds them (vllm-ascend's conftests define --model and
    # --report-dir themselves; claiming one first would crash them).
    result = yield
    options.add_short_forms(early_config, parser)
    return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "npu: precision check of a model on the device under test "
                                       "(vLLM / vllm-ascend) against the FP32 CPU reference")
    # pytest-xdist's own; registered here too so --strict-markers never trips on it without xdist installed
    config.addinivalue_line("markers", "xdist_group(name): keep these tests on one pytest-xdist worker")
    options.reference(config)  # a contradictory --npuprec-reference / --npuprec-update-baselines: usage error
    options.require_records(config)  # likewise --npuprec-require-records with --npuprec-update-baselines
    options.calibration(config)  # likewise for --npuprec-calibrate and its options


def pytest_sessionstart(session: pytest.Session) -> None:
    from . import progress

    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    quiet = session.config.get_verbosity() < 0
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    progress.set_writer(progress.Writer(terminal, capture) if terminal is not None and not quiet else None)
    if options.device(session.config) == "npu":
        from .runners.environment import npu_stack_missing

        missing = npu_stack_missing()
        if missing:
            raise pytest.UsageError(
                f"--device npu was requested but {' and '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not installed on this machine; "
                "a run that asked for NPUs must not pass on CPUs. Install torch_npu and vllm-ascend, or "
                "use --device auto/cpu.")


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    collect.prepare(session.config)
    collect.add_config_dir(session.config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    return collect.collect_file(file_path, parent)


@pytest.fixture(scope="session")
def npuprec_result(pytestconfig: pytest.Config) -> Callable[["str | ModelConfig"], "PrecisionResult"]:
    """Run a model of the config folder (once per session, shared with the YAML checks) and return its result.

    ``npuprec_result("tiny-llama")`` (file stem, model_name or its last part; or a ModelConfig) returns a
    PrecisionResult: ``.verdicts`` (check id -> Verdict with passed/value/threshold/worst/message),
    ``.report`` (the JSON report as a dict), ``.captures`` (prompt id -> side -> float32 logits array,
    [positions x vocab]), ``.capture`` (token ids, positions, greedy outputs), ``.error`` (set when the
    model could not run) and ``.passed``. Honours --npuprec-device/-model-root/-report-dir/-fault/-timeout.
    """
    from .results import load_model, runs

    session_runs = runs(pytestconfig)

    def get(model: "str | ModelConfig") -> "PrecisionResult":
        return session_runs.result(load_model(pytestconfig, model) if isinstance(model, str) else model)

    return get


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and collect.nothing_affected(session.config):
        session.exitstatus = pytest.ExitCode.OK  # a PR gate with nothing to gate passed
    # the last engine's background close ends here, before the summary: what outlived any close is an error
    if closing.settle(session.config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    device = sys.modules.get("pytest_npuprec.runners.device")  # imported only once an engine ran
    if device is not None:
        device.finish_closing()  # the last engine shuts down behind the reports; none outlives the session


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from .calibrate.item import summary_lines as calibrate_summary
    from .results import runs

    lines = collect.summary_lines(config) + closing.summary_lines(config)
    results = runs(config).results
    calibrated = calibrate_summary(config) if options.calibration(config) is not None else []
    if not results and not lines and not calibrated:
        return
    from .report.render import render_terminal

    terminalreporter.section("npuprec precision")
    for result in results.values():
        if result.report is not None:
            terminalreporter.write_line(render_terminal(result.report))
            terminalreporter.write_line(f"report: {result.report_paths.get('json')} (plots: "
                                        f"{result.report_paths.get('html')})")
        else:
            terminalreporter.write_line(f"{result.config.name}: not run: {result.error}")
        terminalreporter.write_line("")
    for line in calibrated + lines:
        terminalreporter.write_line(line)
