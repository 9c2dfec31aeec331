"""Options that never collide with a project's own, validated when parsed."""
from __future__ import annotations

import textwrap

import pytest

CONFIG = """
model_name: "org/Toy-1B"
precision:
  max_tokens: 4
  prompts: ["hello"]
  {timeout}
  thresholds:
    cosine_similarity: {{min: 0.999}}
"""

# what vllm-ascend's tests/e2e/models/conftest.py registers (names and defaults; our own words)
THEIR_MODELS_CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--config-list-file", action="store", default=None)
    parser.addoption("--tp-size", action="store", default="1")
    parser.addoption("--config", action="store", default="./tests/e2e/models/configs/Qwen3-8B.yaml")
    parser.addoption("--report-dir", action="store", default="./benchmarks/accuracy")
"""
THEIR_TEST = """
def test_their_options(pytestconfig):
    print("THEIRS", pytestconfig.getoption("report_dir"), pytestconfig.getoption("--config"),
          pytestconfig.getoption("--tp-size"))
"""
# a robot conftest deeper down that owns --model (like their engine_func_test_robot)
ROBOT_CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--model", action="store", default="qwen")
    parser.addoption("--device", action="store", default="npu0")
"""


@pytest.fixture
def their_tree(pytester):
    models = pytester.path / "tests" / "e2e" / "models"
    models.mkdir(parents=True)
    (models / "conftest.py").write_text(THEIR_MODELS_CONFTEST)
    (models / "test_lm_eval.py").write_text(THEIR_TEST)
    robot = pytester.path / "tests" / "e2e" / "weekly" / "robot"
    robot.mkdir(parents=True)
    (robot / "conftest.py").write_text(ROBOT_CONFTEST)
    (robot / "test_robot.py").write_text("def test_robot(pytestconfig):\n"
                                         "    print('ROBOT', pytestconfig.getoption('model'))\n")
    configs = models / "configs"
    configs.mkdir()
    (configs / "Toy-1B.yaml").write_text(CONFIG.format(timeout=""))
    return pytester


def test_their_subfolder_conftests_load_at_collection_with_the_plugin_installed(their_tree):
    # from the root: both conftests are imported only during collection, after our short forms
    result = their_tree.runpytest_subprocess("-s", "-p", "no:cacheprovider", "tests")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*THEIRS ./benchmarks/accuracy ./tests/e2e/models/configs/Qwen3-8B.yaml 1*",
                                 "*ROBOT qwen*"])


def test_their_conftest_as_initial_conftest_keeps_its_options(their_tree):
    # as their CI runs it: the test file as argument, so the conftest loads before our short forms
    result = their_tree.runpytest_subprocess("-s", "-p", "no:cacheprovider", "tests/e2e/models/test_lm_eval.py",
                                             "--report-dir", "out", "--config", "c.yaml", "--tp-size", "4")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*THEIRS out c.yaml 4*"])
    robot = their_tree.runpytest_subprocess("-s", "-p", "no:cacheprovider", "tests/e2e/weekly/robot",
                                            "--model", "qwen-vl", "--device", "npu3")
    robot.assert_outcomes(passed=1)
    robot.stdout.fnmatch_lines(["*ROBOT qwen-vl*"])


def test_short_forms_left_to_their_conftests_are_named_and_canonical_names_work(their_tree):
    result = their_tree.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider", "tests",
                                             "--npuprec-model", "Toy-1B", "--npuprec-device", "cpu")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["tests/e2e/models/configs/Toy-1B.yaml::test_precision[[]Toy-1B-finite_logits[]]"])
    result.stdout.fnmatch_lines(["note: --model belongs to *tests/e2e/weekly/robot/conftest.py; pytest-npuprec "
                                 "reads only --npuprec-model",
                                 "note: --device belongs to *robot/conftest.py; pytest-npuprec reads only "
                                 "--npuprec-device"])
    assert "note: --config-dir" not in result.stdout.str()  # free: registered, nothing to say
    # and where no conftest holds them, the short forms are ours
    mine = their_tree.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                           "tests/e2e/models/configs", "--model", "Toy-1B", "--device", "cpu",
                                           "--config-dir", "tests/e2e/models/configs")
    assert mine.ret == pytest.ExitCode.OK, mine.stdout.str() + mine.stderr.str()
    mine.stdout.fnmatch_lines(["*test_precision[[]Toy-1B-cosine_similarity[]]"])


def test_ini_can_turn_short_forms_off(pytester):
    pytester.makeini("[pytest]\nnpuprec_short_options =\n")
    result = pytester.runpytest("--model", "x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --model*"])
    pytester.makeini("[pytest]\nnpuprec_short_options = model report-dir\n")
    result = pytester.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*npuprec_short_options: report-dir: expected some of model, device, config-dir, "
                                 "model-root (--report-dir: vllm-ascend's tests/e2e/models/conftest.py registers "
                                 "--report-dir)*"])


@pytest.mark.parametrize("args, message", [
    (["--npuprec-fault", "rope_thta"], "unknown fault 'rope_thta'; expected one of attention_scale, rope_theta"),
    (["--npuprec-fault", "rope_theta=lots"], "magnitude 'lots' is not a number"),
    (["--npuprec-timeout", "0"], "expected a positive number of seconds, got '0'"),
    (["--npuprec-timeout", "-5"], "expected a positive number of seconds"),
    (["--npuprec-timeout", "soon"], "expected a positive number of seconds, got 'soon'"),
    (["--npuprec-timeout", "inf"], "expected a positive number of seconds"),
    (["--npuprec-timeout", "start=600,generate=30"], "got 'start=600,generate=30' (per phase: start=SECONDS,call="),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--npuprec-calibrate-factor", "0.5", "--npuprec-calibrate"], "expected a number >= 1 (bounds are the noise floor"),
    (["--npuprec-calibrate-factor", "lots", "--npuprec-calibrate"], "got 'lots'"),
    (["--npuprec-calibrate-factor", "4"], "go with --npuprec-calibrate"),
    (["--npuprec-calibrate-force"], "go with --npuprec-calibrate"),
    (["--npuprec-calibrate-runs", "2"], "go with --npuprec-calibrate"),
    (["--npuprec-calibrate-runs", "0", "--npuprec-calibrate"], "expected a number of device runs >= 1"),
    (["--npuprec-calibrate-runs", "lots", "--npuprec-calibrate"], "invalid int value: 'lots'"),
    (["--npuprec-calibrate", "--npuprec-update-baselines"], "records nothing; run --npuprec-update-baselines"),
])
def test_bad_option_values_are_usage_errors_when_parsed(pytester, args, message):
    result = pytester.runpytest("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{args[0]}*{message}*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_timeout_option_or_config_reaches_run_options(pytester):
    from pytest_npuprec.config.loader import load_config
    from pytest_npuprec.results import Runs

    configs = pytester.mkdir("configs")
    (configs / "with.yaml").write_text(CONFIG.format(timeout="timeout_s: 900"))
    (configs / "without.yaml").write_text(CONFIG.format(timeout=""))
    with_timeout, without = load_config(configs / "with.yaml"), load_config(configs / "without.yaml")
    assert with_timeout.precision.timeout_s == 900.0 and without.precision.timeout_s is None

    runs = Runs(pytester.parseconfigure("--npuprec-timeout", "12.5", "--npuprec-fault", "rope_theta=0.5",
                                        "--device", "cpu"))
    assert runs.options_for(with_timeout).timeout_s == 12.5  # the command line wins
    assert runs.options_for(without).timeout_s == 12.5
    assert runs.options_for(without).fault == "rope_theta=0.5" and runs.options_for(without).device == "cpu"
    runs = Runs(pytester.parseconfigure())
    assert runs.options_for(with_timeout).timeout_s == 900.0
    assert runs.options_for(without).timeout_s is None and runs.options_for(without).device == "auto"


def test_timeout_per_phase_in_config_and_on_the_command_line(pytester):
    from pytest_npuprec.config.loader import load_config
    from pytest_npuprec.results import Runs

    path = pytester.path / "m.yaml"
    path.write_text(CONFIG.format(timeout="timeout_s: {start: 600, call: 30}"))
    assert load_config(path).precision.timeout_s == {"start": 600.0, "call": 30.0}
    runs = Runs(pytester.parseconfigure("--npuprec-timeout", "start=900,call=20"))
    assert runs.options_for(load_config(path)).timeout_s == {"start": 900.0, "call": 20.0}


@pytest.mark.parametrize("value, message", [
    ("0", "precision.timeout_s: expected a positive number of seconds, got 0"),
    ("true", "precision.timeout_s: expected a number, got bool"),
    ("'10'", "precision.timeout_s: expected a number, got str"),
    ("{start: 600, call: -1}", r"precision.timeout_s.call: expected a positive number of seconds, got -1"),
    ("{start: 600, generate: 30}", r"precision.timeout_s.generate: unknown key; expected one of: call, start"),
    ("{}", r"precision.timeout_s: empty; expected start and/or call"),
])
def test_bad_timeout_in_config(tmp_path, value, message):
    from pytest_npuprec.config.loader import ConfigError, load_config

    path = tmp_path / "m.yaml"
    path.write_text(CONFIG.format(timeout=f"timeout_s: {value}"))
    with pytest.raises(ConfigError, match=f"m.yaml: {message}"):
        load_config(path)


def test_short_and_canonical_forms_share_one_value(pytester):
    config = pytester.parseconfigure("--model", "a,b", "--npuprec-model", "c", "--model-root", "r1",
                                     "--npuprec-model-root", "r2", "--config-dir", "cfg")
    from pytest_npuprec import options

    assert options.requested_models(config) == (["a", "b", "c"], True)
    assert [p.name for p in options.model_roots(config)] == ["r1", "r2"]
    assert options.config_dir(config) == (pytester.path / "cfg").resolve()
    assert options.requested_models(pytester.parseconfigure()) == (["tiny-llama"], False)


def test_conftest_scan_only_counts_addoption_calls(pytester):
    """A conftest that merely passes '--model' to a subprocess (like our e2e run_suite) does not hold it."""
    sub = pytester.mkpydir("sub")
    (sub / "conftest.py").write_text(textwrap.dedent("""
        def run(pytester):
            return pytester.runpytest("-m", "npu", "--model", "x")
    """))
    (sub / "test_x.py").write_text("def test_x():\n    pass\n")
    config = pytester.parseconfigure()
    from pytest_npuprec import options

    assert options.short_forms_taken(config) == []
    assert config.getoption("npuprec_model") is None


def test_the_fault_help_names_every_fault_the_worker_can_inject(pytester):
    from pytest_npuprec.runners.vllm_worker import FAULTS

    help_text = " ".join(pytester.runpytest("--help").stdout.lines).replace(" ", "")
    listed = help_text.split("injectadevice-sidefault(")[1].split(")")[0].split(",")
    assert listed == list(FAULTS)
