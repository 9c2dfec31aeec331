"""The plugin as a user meets it: options, collection, errors. No engine runs here."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CONFIG = """
model_name: "org/Absent-Model-1B"
precision:
  max_tokens: 4
  decode: false  # one check per threshold: these tests count them
  prompts: ["hello"]
  thresholds:
    cosine_similarity: {min: 0.999}
    kl_divergence: {max: 0.01}
"""
HEAVY = ("torch", "vllm", "transformers")


@pytest.fixture
def project(pytester):
    """A repository holding nothing but a config: the plugin collects it itself."""
    configs = pytester.mkdir("configs")
    (configs / "Absent-Model-1B.yaml").write_text(CONFIG)
    return pytester


def _imports_after(code: str) -> list[str]:
    probe = code + f"\nimport sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])


def test_help_imports_no_torch_vllm_or_transformers():
    code = "import pytest, contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()): pytest.main(['--help'])"
    assert _imports_after(code) == []


def test_config_metrics_verdicts_and_report_import_nothing_heavy():
    code = ("import pytest_npuprec.plugin, pytest_npuprec.config.loader, pytest_npuprec.measure.thresholds, "
            "pytest_npuprec.measure, pytest_npuprec.measure.kinds, pytest_npuprec.errors, "
            "pytest_npuprec.verdicts, pytest_npuprec.report.render, pytest_npuprec.report.write, "
            "pytest_npuprec.report.document, pytest_npuprec.orchestrate, pytest_npuprec.checkpoints.locate, "
            "pytest_npuprec.options, pytest_npuprec.selection, pytest_npuprec.collect, pytest_npuprec.results, "
            "pytest_npuprec.config.engine_args, pytest_npuprec.runners.device")
    assert _imports_after(code) == []


def test_options_and_marker_are_registered(project):
    result = project.runpytest("--help")
    for option in ("--model=NAME", "--npuprec-model=NAME", "--config-dir=DIR", "--npuprec-config-dir=DIR",
                   "--model-root=DIR", "--npuprec-model-root=DIR", "--device=", "--npuprec-device=",
                   "--npuprec-report-dir=DIR", "--npuprec-fault", "--npuprec-timeout=SECONDS",
                   "--npuprec-changed-files=FILE"):
        result.stdout.fnmatch_lines([f"*{option}*"])
    # vllm-ascend's tests/e2e/models/conftest.py owns --report-dir: never a short form of ours
    assert not re.search(r"(?<![\w-])--report-dir", result.stdout.str())
    project.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.npu:*"])


def test_one_test_per_model_and_check_all_marked_npu(project):
    result = project.runpytest("--collect-only", "-q", "-m", "npu", "--config-dir", "configs",
                               "--model", "Absent-Model-1B")
    result.stdout.fnmatch_lines([
        "*test_precision?Absent-Model-1B-finite_logits?",
        "*test_precision?Absent-Model-1B-cosine_similarity?",
        "*test_precision?Absent-Model-1B-kl_divergence?",
        "3 tests collected*",
    ])


def test_model_list_is_comma_separated_and_repeatable(project):
    (project.path / "configs" / "Other.yaml").write_text(CONFIG.replace("Absent-Model-1B", "Other"))
    for args in (["--model", "Absent-Model-1B,Other"], ["--model", "Absent-Model-1B", "--model", "Other"],
                 ["--model", "all"], ["--npuprec-model", "org/Other", "--model", "Absent-Model-1B"]):
        result = project.runpytest("--collect-only", "-q", "--config-dir", "configs", *args)
        result.stdout.fnmatch_lines(["6 tests collected*"])


def test_misspelled_threshold_is_one_red_item_without_traceback(project):
    bad = CONFIG.replace("cosine_similarity:", "cosine_simlarity:")
    (project.path / "configs" / "Absent-Model-1B.yaml").write_text(bad)
    result = project.runpytest("--config-dir", "configs", "--model", "Absent-Model-1B")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*pytest-npuprec: invalid config: *Absent-Model-1B.yaml: "
                                 "precision.thresholds.cosine_simlarity: unknown metric*",
                                 "FAILED configs/Absent-Model-1B.yaml::test_precision[[]Absent-Model-1B-config[]]*"])
    assert "Traceback" not in result.stdout.str() and "loader.py" not in result.stdout.str()


def test_device_npu_without_ascend_stack_ends_red(project):
    pytest.importorskip("sys")  # always here; the check below is what matters
    from pytest_npuprec.runners.environment import npu_stack_missing

    if not npu_stack_missing():
        pytest.skip("this machine has torch_npu and vllm-ascend")
    result = project.runpytest("--config-dir", "configs", "--model", "Absent-Model-1B", "--device", "npu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--device npu was requested but*not installed*must not pass on CPUs*"])


def test_missing_real_weights_fail_every_check_naming_model_and_places(project, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    result = project.runpytest("--config-dir", "configs", "--model", "Absent-Model-1B", "--model-root", str(root),
                               "--device", "cpu", "--npuprec-report-dir", str(tmp_path / "reports"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    assert "Absent-Model-1B (org/Absent-Model-1B): no checkpoint" in out
    assert str(root / "org" / "Absent-Model-1B") in out and str(root / "Absent-Model-1B") in out
    assert str(root / "models--org--Absent-Model-1B" / "snapshots") in out


def test_taken_model_option_falls_back_to_npuprec_model(project):
    project.makeconftest(textwrap.dedent("""
        def pytest_addoption(parser):
            parser.addoption("--model", action="store", default="robot-default")
    """))
    result = project.runpytest("--collect-only", "-q", "--config-dir", "configs",
                               "--npuprec-model", "Absent-Model-1B", "--model", "whatever-the-robot-wants")
    result.stdout.fnmatch_lines(["3 tests collected*"])
    result.stdout.fnmatch_lines(["note: --model belongs to another plugin or conftest; pytest-npuprec reads only "
                                 "--npuprec-model"])
    assert project.runpytest("--help").ret == 0


SEED_MODELS = ["Qwen3Guard-Gen-4B", "Nanbeige4-3B-Thinking-2511", "BitCPM4-CANN-1B", "BitCPM4-0.5B",
               "BitCPM4-CANN-1B-unquantized"]


def test_seed_model_configs_collect(project):
    import shutil
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "e2e" / "models" / "configs"
    for path in configs.glob("*.yaml"):
        shutil.copy(path, project.path / "configs" / path.name)
    result = project.runpytest("--collect-only", "-q", "-m", "npu", "--config-dir", "configs",
                               "--model", ",".join(SEED_MODELS))
    for name in SEED_MODELS:
        result.stdout.fnmatch_lines([f"configs/{name}.yaml::test_precision?{name}-finite_logits?",
                                     f"configs/{name}.yaml::test_precision?{name}-token_agreement?"])
    assert result.ret == pytest.ExitCode.OK


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def without_hypothesis(tmp_path):
    """An environment where `import hypothesis` fails, as after a plain `pip install -e .` (no test extra)."""
    blocker = tmp_path / "blocker" / "hypothesis"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'hypothesis'\", name='hypothesis')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker.parent))
    probe = subprocess.run([sys.executable, "-c", "import hypothesis"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'hypothesis'" in probe.stderr
    # its pytest plugin would not be installed either
    return lambda *args: subprocess.run([sys.executable, "-m", "pytest", "-p", "no:hypothesispytest",
                                         "-p", "no:cacheprovider", *args], cwd=REPO, env=env,
                                        capture_output=True, text=True, timeout=600)


def _tiny_llama_ids() -> list[str]:
    from pytest_npuprec.config.loader import load_config

    config = load_config(REPO / "tests" / "e2e" / "models" / "configs" / "tiny-llama.yaml")
    return [f"tests/e2e/models/configs/tiny-llama.yaml::test_precision[tiny-llama-{c}]" for c in config.check_ids]


def test_a_config_folder_outside_the_repository_runs_from_its_root(tmp_path):
    """A copy of a config in a temporary folder, run from the repository root with its conftest and ini as they
    are: pytest must not take the folder for its rootdir, and the plugin collects the folder's configs itself
    (tests/e2e/test_wrong_device.py runs a copied tiny-llama config so, green)."""
    outside = tmp_path / "my-configs"
    outside.mkdir()
    (outside / "Absent-Model-1B.yaml").write_text(CONFIG)
    (outside / "Broken.yaml").write_text(CONFIG.replace("max_tokens: 4", "max_tokens: many"))

    def run(option, *args):
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", "npu", "-p", "no:cacheprovider", option,
                               str(outside), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
        out = done.stdout + done.stderr
        assert "-q" in args or (f"rootdir: {REPO}" in out and "configfile: pyproject.toml" in out), out[-3000:]
        assert "Traceback" not in out and "non-top-level conftest" not in out, out[-3000:]
        return done.returncode, out

    code, out = run("--npuprec-config-dir", "--collect-only", "-q", "--npuprec-model", "Absent-Model-1B")
    assert code == pytest.ExitCode.OK, out[-3000:]
    assert [line for line in out.splitlines() if "::" in line] == [
        f"{outside / 'Absent-Model-1B.yaml'}::test_precision[Absent-Model-1B-{check}]"
        for check in ("finite_logits", "cosine_similarity", "kl_divergence")]
    code, out = run("--config-dir", "--npuprec-model", "Broken")  # the usual one red item, naming file and key
    assert code == pytest.ExitCode.TESTS_FAILED and re.search(r"\b1 failed\b", out), out[-3000:]
    assert f"pytest-npuprec: invalid config: {outside / 'Broken.yaml'}: precision.max_tokens: " in out, out[-3000:]
    assert f"FAILED {outside / 'Broken.yaml'}::test_precision[Broken-config]" in out, out[-3000:]


def test_headline_command_collects_from_the_project_root_without_test_extras(without_hypothesis):
    run = without_hypothesis("--collect-only", "-q", "-m", "npu", "--model", "tiny-llama")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert [line for line in run.stdout.splitlines() if "::" in line] == _tiny_llama_ids()
    # the project's own tests are not even imported by `-m npu` (nothing deselected, no module skipped)
    assert "deselected" not in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


def test_project_test_run_collects_the_default_model_once_and_skips_property_tests_cleanly(without_hypothesis):
    # what `./dev.sh test` collects (every test under tests/), here without hypothesis
    run = without_hypothesis("--collect-only", "-q", "-rs")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    precision = [line for line in run.stdout.splitlines() if "::test_precision[" in line]
    assert precision == _tiny_llama_ids()  # once each, and no other model's checks
    assert "tests/unit/test_metrics_tokens.py::" not in run.stdout
    assert re.search(r"SKIPPED \[1\] tests/unit/test_metrics_logits.py:\d+: could not import 'hypothesis'", run.stdout)
    assert re.search(r"SKIPPED \[1\] tests/unit/test_metrics_tokens.py:\d+: could not import 'hypothesis'", run.stdout)
