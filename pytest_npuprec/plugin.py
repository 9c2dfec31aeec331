"""pytest-npuprec: options, the `npu` marker and the fixtures of the precision suite.

This module stays thin and imports nothing heavy: torch, transformers and vLLM are imported
only when a model actually runs, so `pytest --help` and the unit tests never load them.

A precision test module is one line (the suite ships it):

    from pytest_npuprec.suite import test_precision  # noqa: F401

and `pytest -m npu --model NAME` runs it once per (model, check) of tests/e2e/models/configs/NAME.yaml.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .orchestrate import ModelResult

DEFAULT_MODEL = "tiny-llama"
DEFAULT_CONFIG_DIR = "tests/e2e/models/configs"
_MODEL_TAKEN = "_npuprec_model_option_taken"
_results_key = pytest.StashKey[dict]()  # model name -> ModelResult, for the terminal summary


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("npuprec", "NPU precision suite (pytest-npuprec)")
    group.addoption("--npuprec-model", action="append", default=None, metavar="NAME",
                    help=f"model config(s) to run: config file stem, model_name or its last part; repeatable "
                         f"and comma-separated; 'all' = every config with a precision section "
                         f"(default: {DEFAULT_MODEL}). Also available as --model unless another plugin or "
                         f"conftest (e.g. vllm-ascend's) already defines --model.")
    group.addoption("--config-dir", default=None, metavar="DIR",
                    help=f"folder of <model>.yaml configs (default: <rootdir>/{DEFAULT_CONFIG_DIR})")
    group.addoption("--model-root", action="append", default=None, metavar="DIR",
                    help="folder holding real checkpoints, laid out like a ModelScope or Hugging Face cache; "
                         "repeatable (default: $NPUPREC_MODEL_ROOT, ':'-separated)")
    group.addoption("--device", default="auto", choices=("auto", "npu", "cuda", "cpu"),
                    help="device for the engine under test; 'npu' fails the run when torch_npu/vllm-ascend "
                         "are missing, it never falls back (default: auto)")
    group.addoption("--report-dir", default=None, metavar="DIR",
                    help="where JSON/Markdown reports and captures go (default: <rootdir>/reports/npuprec)")
    group.addoption("--npuprec-fault", default=None, metavar="NAME[=MAGNITUDE]",
                    help="inject a device-side fault (attention_scale, rope_theta, rmsnorm_offset, overflow, "
                         "nondeterminism) to prove the "
                         "checks can fail; for validating the suite itself")
    parser.addini("npuprec_config_dir", "default for --config-dir", default=DEFAULT_CONFIG_DIR)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Any:
    # Register the short --model only after the root conftests had their say: vllm-ascend's
    # robot conftest defines --model itself, and claiming it first would crash that conftest.
    result = yield
    try:
        parser.getgroup("npuprec").addoption("--model", action="append", dest="npuprec_short_model",
                                             default=None, metavar="NAME", help="same as --npuprec-model")
    except (ValueError, argparse.ArgumentError):  # pytest < 9 raises ValueError, 9 argparse's error
        setattr(early_config, _MODEL_TAKEN, True)
    return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "npu: precision check of a model on the device under test "
                                       "(vLLM / vllm-ascend) against the FP32 CPU reference")
    config.stash[_results_key] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.getoption("--device") == "npu":
        from .runners.environment import npu_stack_missing

        missing = npu_stack_missing()
        if missing:
            raise pytest.UsageError(
                f"--device npu was requested but {' and '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not installed on this machine; "
                "a run that asked for NPUs must not pass on CPUs. Install torch_npu and vllm-ascend, or "
                "use --device auto/cpu.")


def requested_models(config: pytest.Config) -> list[str]:
    values = (config.getoption("npuprec_model") or []) + (getattr(config.option, "npuprec_short_model", None) or [])
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or [DEFAULT_MODEL]


def _cli_path(config: pytest.Config, value: str) -> Path:
    """A path given on the command line is relative to where pytest was started."""
    return (config.invocation_params.dir / Path(value).expanduser()).resolve()


def _config_dir(config: pytest.Config) -> Path:
    if config.getoption("--config-dir"):
        return _cli_path(config, config.getoption("--config-dir"))
    return config.rootpath / config.getini("npuprec_config_dir")


def _report_dir(config: pytest.Config) -> Path:
    value = config.getoption("--report-dir")
    return _cli_path(config, value) if value else config.rootpath / "reports" / "npuprec"


def _model_roots(config: pytest.Config) -> list[Path]:
    from .weights import MODEL_ROOT_ENV

    values = config.getoption("--model-root") or [p for p in os.environ.get(MODEL_ROOT_ENV, "").split(":") if p]
    return [_cli_path(config, v) for v in values]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "npuprec_check" not in metafunc.fixturenames:
        return
    from .config.loader import ConfigError, select_configs

    try:
        configs = select_configs(_config_dir(metafunc.config), requested_models(metafunc.config))
    except ConfigError as exc:
        raise pytest.Collector.CollectError(f"pytest-npuprec: {exc}") from None
    params, ids = [], []
    for model in configs:
        for check_id in model.check_ids:
            params.append(pytest.param((model, check_id), marks=pytest.mark.npu))
            ids.append(f"{model.name}-{check_id}")
    metafunc.parametrize("npuprec_check", params, ids=ids)


@pytest.fixture(scope="session")
def npuprec_results(pytestconfig: pytest.Config):
    """Run a model (once per session) and return its ModelResult: verdicts per check and the report."""
    from .orchestrate import RunOptions, run_model

    results: dict[str, ModelResult] = pytestconfig.stash[_results_key]
    options = RunOptions(device=pytestconfig.getoption("--device"), model_roots=_model_roots(pytestconfig),
                         report_dir=_report_dir(pytestconfig), fault=pytestconfig.getoption("--npuprec-fault"))

    def get(model_config) -> "ModelResult":
        if model_config.name not in results:
            results[model_config.name] = run_model(model_config, options)
        return results[model_config.name]

    return get


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results: dict[str, ModelResult] = config.stash.get(_results_key, {})
    if not results:
        return
    from .report.render import render_terminal

    terminalreporter.section("npuprec precision")
    for result in results.values():
        if result.report is not None:
            terminalreporter.write_line(render_terminal(result.report))
            terminalreporter.write_line(f"report: {result.report_paths.get('json')}")
        else:
            terminalreporter.write_line(f"{result.config.name}: not run: {result.error}")
        terminalreporter.write_line("")
    if getattr(config, _MODEL_TAKEN, False):
        terminalreporter.write_line("note: --model is defined by another plugin here; pytest-npuprec read "
                                    "--npuprec-model")
