"""The ready-to-copy workflow for vllm-ascend parses, has the pieces CI needs, and every pytest command in it
uses only options pytest with this plugin accepts (canonical --npuprec-* names: a short form may belong to
one of their conftests)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / "docs" / "vllm-ascend-nightly-precision.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def pytest_commands(script: str) -> list[list[str]]:
    """The argument lists of the `pytest` commands in a shell script (continuation lines joined,
    the part after a pipe taken, ${{ }} and $VARS replaced by a placeholder)."""
    script = re.sub(r"\$\{\{[^}]*\}\}", "X", script.replace("\\\n", " "))
    commands = []
    for line in script.splitlines():
        for part in line.split("|"):
            words = shlex.split(re.sub(r"\$\{?\w+\}?", "X", part))
            if words and words[0] == "pytest":
                commands.append(words[1:])
    return commands


def test_it_parses_and_has_the_triggers_and_settings_ci_needs(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["schedule"][0]["cron"]
    assert "models" in triggers["workflow_dispatch"]["inputs"]
    assert "pull_request" in triggers
    env = workflow["env"]
    assert str(env["HF_HUB_OFFLINE"]) == "1" and str(env["VLLM_USE_MODELSCOPE"]) == "True"
    assert env["NIGHTLY_MODELS"]
    upload = [s for s in _steps(workflow) if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert upload[0]["with"]["path"] == env["REPORT_DIR"] and upload[0]["if"] == "always()"
    assert upload[1]["with"]["path"] == env["BASELINE_DIR"] and "inputs.update_baselines" in upload[1]["if"]
    assert triggers["workflow_dispatch"]["inputs"]["update_baselines"]["default"] is False


def test_every_pytest_command_uses_options_the_plugin_accepts(workflow, pytester):
    commands = [(s["name"], c) for s in _steps(workflow) for c in pytest_commands(s.get("run", ""))]
    assert len(commands) == 2, commands  # nightly/dispatch and the PR gate
    (pytester.path / "X").write_text("")  # a --npuprec-changed-files placeholder that exists
    for name, args in commands:
        ours = [a for a in args if a.startswith("--") and a.split("=")[0] in
                ("--model", "--device", "--config-dir", "--model-root", "--report-dir")]
        assert not ours, f"{name}: use the canonical --npuprec-* names, not {ours}"
        assert "-m" in args and args[args.index("-m") + 1] == "npu"
        if "--npuprec-changed-files" in args:  # stdin here is pytest's own; the listing is a file instead
            args[args.index("--npuprec-changed-files") + 1] = "X"
        config = pytester.parseconfig(*args)
        assert config.getoption("npuprec_device") == "npu", name
        assert config.getoption("npuprec_report_dir") == "X" and config.getoption("npuprec_timeout") == 1800
        assert config.getoption("npuprec_baseline_dir") == "X" and config.getoption("npuprec_reference") == "auto"
        assert len(config.getoption("npuprec_model_root")) == 2
    gate_step = next(s for s in _steps(workflow) if s["name"].startswith("PR gate"))
    assert gate_step["if"] == "github.event_name == 'pull_request'"
    assert re.search(r"git diff --name-only .+? \| pytest .*--npuprec-changed-files - ", gate_step["run"].replace("\\\n", " "))


def test_the_checker_itself_catches_an_unknown_option(pytester):
    (args,) = pytest_commands("pytest -m npu tests \\\n  --npuprec-modle Qwen3-8B")
    with pytest.raises(pytest.UsageError, match="unrecognized arguments: --npuprec-modle"):
        pytester.parseconfig(*args)
