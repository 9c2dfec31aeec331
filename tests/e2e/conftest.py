import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "tests" / "e2e" / "models" / "configs"


@pytest.fixture(scope="session")
def tiny_llama():
    from pytest_npuprec.standins import ensure_standin

    return ensure_standin("tiny-llama")


@pytest.fixture(scope="session")
def repo_config_dir():
    return CONFIG_DIR


@pytest.fixture
def run_suite(pytester, tmp_path, repo_config_dir):
    """Run the precision suite in a subprocess: run_suite(model, *pytest_args) -> (result, report dir).

    The reference comes from the committed baselines (REPO/baselines) when they match, as in CI's own runs;
    pass --npuprec-baseline-dir to use another folder. The layer-by-layer diagnosis (a second, eager engine on a
    failing logit check) is off unless a test passes --npuprec-diagnose: most tests here fail a model on purpose."""

    def run(model, *args, config_dir=repo_config_dir, outside=False):
        # a repository holding nothing but the configs: the plugin collects the YAML itself; `outside`: the configs
        # are a copy in a folder outside the repository, named by its absolute path
        configs = tmp_path / "configs-outside" if outside else pytester.path / "configs"
        configs.mkdir(exist_ok=True)
        for path in Path(config_dir).glob("*.yaml"):
            shutil.copy(path, configs / path.name)
        report_dir = tmp_path / "reports"
        defaults = [] if "--npuprec-baseline-dir" in args else ["--npuprec-baseline-dir", str(REPO / "baselines")]
        if not any(str(a).startswith("--npuprec-diagnose") for a in args):
            defaults += ["--npuprec-diagnose", "never"]
        result = pytester.runpytest_subprocess("-m", "npu", "--model", model, "--npuprec-config-dir",
                                               str(configs) if outside else "configs",
                                               "--npuprec-report-dir", str(report_dir), "-p", "no:cacheprovider",
                                               *defaults, *args)
        return result, report_dir

    return run


@pytest.fixture
def failed_checks():
    """The check ids of `model` that failed in a run_suite result."""
    return lambda result, model: set(re.findall(rf"FAILED .*test_precision\[{re.escape(model)}-([\w-]+)\]", result.stdout.str()))


@pytest.fixture
def derive_config(tmp_path, repo_config_dir):
    """derive_config(model, edit) -> a folder holding `model`'s config as `edit(doc)` changed it (the parsed YAML,
    edited in place; comments are not kept): a config the tests derive from a shipped one."""

    def derive(model, edit):
        folder = tmp_path / f"derived-{model}"
        folder.mkdir(exist_ok=True)
        doc = yaml.safe_load((repo_config_dir / f"{model}.yaml").read_text(encoding="utf-8"))
        edit(doc)
        (folder / f"{model}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return folder

    return derive
