"""Where CI looks (step summary, JUnit properties), the npuprec_result fixture and PR gating, without an engine:
run_model is replaced by the real pipeline from a synthetic capture onward (measure, judge, report)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput
from pytest_npuprec.orchestrate import ModelResult

CONFIG = """
model_name: "org/{name}"
precision:
  max_tokens: 4
  prompts: ["hello", "world"]
  thresholds:
    cosine_similarity: {{min: 0.99}}
    kl_divergence: {{max: {kl_max}}}
{extra}"""


def synthetic_run(config, options):
    """What run_model does after the engines: a capture with known logits -> verdicts -> report; drift checks are
    judged by the real rule against the device records of --npuprec-baseline-dir (for a fabricated device)."""
    from pytest_npuprec.measure.thresholds import measure
    from pytest_npuprec.report.document import build_report
    from pytest_npuprec.report.write import write_report
    from pytest_npuprec.measure import Measured
    from pytest_npuprec.measure.steps import decode_summary, measure_decode
    from pytest_npuprec.report.steps import add_decode
    from pytest_npuprec.verdicts import judge_checks

    rng = np.random.default_rng(len(config.name))
    writer = CaptureWriter(options.report_dir / "captures" / config.name)
    records = []
    for i, prompt in enumerate(config.precision.prompts):
        ref = rng.normal(0, 2, size=(4, 32))
        ref[np.arange(4), rng.integers(0, 32, 4)] += 10
        dev = ref + rng.normal(0, 0.05, size=ref.shape)
        tokens = tuple(int(t) for t in ref.argmax(1))
        p = PromptInput(index=i, id=prompt.id, label=prompt.label, token_ids=(1, 2, 3))
        np.save(writer.logits_path("reference", i), ref.astype(np.float32))
        np.save(writer.logits_path("device", i), dev.astype(np.float32))
        np.save(writer.logits_path("device-steps", i), dev.astype(np.float32))  # its own generation, same tokens
        records.append(PromptCapture(p, (1, 2, 3) + tokens, tuple(range(2, 6)), {"reference": tokens, "device": tokens}, {}))
    capture = writer.finish(ModelCapture(config.name, records, {"positions_mode": "continuation", "max_tokens": 4}))
    m = measure(capture)
    decode = measure_decode(capture, m)
    verdicts = judge_checks(config, Measured(m, decode=decode), _drift(config, options, m))
    report = build_report(config, m, verdicts, capture.meta, str)
    add_decode(report, decode, decode_summary(capture, decode))
    return ModelResult(config, verdicts, report, write_report(report, options.report_dir))


def _drift(config, options, measured):
    from pytest_npuprec.baselines.device_records import read_records
    from pytest_npuprec.baselines.drift import judge_drift

    folder = options.baselines.folder / config.name if options.baselines.folder else None
    records, broken = read_records(folder) if folder else ([], [])
    hw = {"platform": "cpu", "device_name": "Test CPU"}
    return {c.id: judge_drift(c, config.name, float(measured.cells[c.metric].summary()["mean"]), hw, "d", records,
                              folder=folder, broken=broken, require=options.baselines.require_records)
            for c in config.precision.drift}


@pytest.fixture
def repo(pytester, monkeypatch):
    """A repository with two model configs (one passes, one has an impossible KL bound); no engine."""
    monkeypatch.setattr("pytest_npuprec.orchestrate.run_model", synthetic_run)
    monkeypatch.setattr("pytest_npuprec.config.engine_args.check_engine_args", lambda config: None)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    configs = pytester.mkdir("configs")
    (configs / "good.yaml").write_text(CONFIG.format(name="good", kl_max=1.0, extra=""))
    (configs / "bad.yaml").write_text(CONFIG.format(name="bad", kl_max="1.0e-12", extra=""))
    pytester.makeini("[pytest]\nnpuprec_config_dir = configs\n")
    return pytester


def test_junit_xml_carries_value_bound_worst_prompt_and_position(repo):
    xml = repo.path / "out.xml"
    result = repo.runpytest("-m", "npu", "--model", "good,bad", f"--junitxml={xml}",
                            "--npuprec-report-dir", "reports")
    result.assert_outcomes(passed=8, failed=2)  # 5 checks each (3 + the 2 logit bounds on decode rows); bad: kl x2
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in ET.parse(xml).getroot().iter("testcase")}
    kl = cases["test_precision[bad-kl_divergence]"]
    report = json.loads((repo.path / "reports" / "bad.json").read_text())
    measured = next(c for c in report["checks"] if c["check"] == "kl_divergence")
    assert float(kl["value"]) == pytest.approx(measured["value"], rel=1e-8) and kl["passed"] == "false"
    assert kl["bound"] == "max" and float(kl["threshold"]) == 1e-12 and kl["reduce"] == "mean"
    assert kl["worst_prompt"] == measured["worst"]["prompt_id"]
    assert int(kl["worst_position"]) == measured["worst"]["position"]
    assert kl["model"] == "bad" and kl["check"] == "kl_divergence"
    assert cases["test_precision[good-cosine_similarity]"]["passed"] == "true"


def test_step_summary_is_appended_per_model(repo, monkeypatch):
    summary = repo.path / "summary.md"
    summary.write_text("# written by an earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    repo.runpytest("-m", "npu", "--model", "good,bad", "--npuprec-report-dir", "reports")
    text = summary.read_text()
    assert text.startswith("# written by an earlier step\n")
    for model in ("good", "bad"):
        markdown = (repo.path / "reports" / f"{model}.md").read_text()
        assert text.count(markdown.strip()) == 1


def test_step_summary_names_a_model_that_could_not_run(repo, monkeypatch):
    def broken(config, options):
        return ModelResult(config, error=RuntimeError("engine fell over"))

    monkeypatch.setattr("pytest_npuprec.orchestrate.run_model", broken)
    summary = repo.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    repo.runpytest("-m", "npu", "--model", "good")
    assert "## good: not run" in summary.read_text() and "engine fell over" in summary.read_text()


def test_fixture_is_listed_and_returns_verdicts_report_and_arrays(repo):
    repo.runpytest("--fixtures").stdout.fnmatch_lines(["npuprec_result*", "*Run a model of the config folder*"])
    repo.makepyfile(test_mine="""
        import numpy as np

        def test_own_precision_check(npuprec_result):
            result = npuprec_result("good")
            assert result.error is None and result.passed
            assert result.verdicts["cosine_similarity"].passed
            assert result.report["model"] == "good"
            arrays = result.captures["p1"]
            assert set(arrays) == {"device", "reference", "device-steps"} and arrays["device"].shape == (4, 32)
            assert (arrays["device"].argmax(-1) == arrays["reference"].argmax(-1)).all()
            assert npuprec_result("org/good") .report is result.report  # run once per session

        def test_bad_model(npuprec_result):
            result = npuprec_result("bad")
            assert not result.passed and not result.verdicts["kl_divergence"].passed
    """)
    result = repo.runpytest("test_mine.py", "--npuprec-report-dir", "reports")
    result.assert_outcomes(passed=2)


def test_fixture_names_an_unknown_model(repo):
    repo.makepyfile(test_mine="def test_x(npuprec_result):\n    npuprec_result('nope')\n")
    result = repo.runpytest("test_mine.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*npuprec_result('nope'): --model nope: no config in *configs with that file "
                                 "name or model_name; known: bad, good*"])


def test_invalid_config_is_one_red_item_and_the_others_still_run(repo):
    (repo.path / "configs" / "broken.yaml").write_text(CONFIG.format(name="broken", kl_max=1.0, extra="")
                                                        .replace("max_tokens: 4", "max_tokens: four"))
    result = repo.runpytest("-m", "npu", "--model", "all")
    result.assert_outcomes(passed=8, failed=3)  # good: 5 pass; bad: kl, kl-decode fail; broken: one config item
    result.stdout.fnmatch_lines(["*broken.yaml: precision.max_tokens: expected an integer, got str*"])
    assert "test_precision[broken-finite_logits]" not in result.stdout.str()


# --- PR gating ---------------------------------------------------------------------------------------

GATED = 'gate:\n  paths: ["vllm_ascend/models/qwen3*.py", "vllm_ascend/ops/rotary_embedding.py"]\n'


@pytest.fixture
def gated(repo):
    (repo.path / "configs" / "qwen.yaml").write_text(CONFIG.format(name="qwen", kl_max=1.0, extra=GATED))
    return repo


def _collected(result) -> set[str]:
    return {line.split("[")[1].split("-")[0] for line in result.stdout.lines if "::test_precision[" in line}


@pytest.mark.parametrize("changed, models", [
    (["vllm_ascend/models/qwen3_moe.py"], {"qwen"}),
    (["./vllm_ascend/ops/rotary_embedding.py", "README.md"], {"qwen"}),
    (["configs/good.yaml"], {"good"}),
    (["configs/bad.yaml", "vllm_ascend/models/qwen3.py"], {"bad", "qwen"}),
])
def test_changed_files_select_the_touched_models(gated, changed, models):
    (gated.path / "changed.txt").write_text("\n".join(changed) + "\n")
    result = gated.runpytest("--collect-only", "-q", "--npuprec-changed-files", "changed.txt")
    assert result.ret == pytest.ExitCode.OK
    assert _collected(result) == models
    result.stdout.fnmatch_lines([f"PR gate: {len(changed)} changed path(s) select *"])


def test_changed_files_narrow_an_explicit_model_list_and_read_stdin(gated, monkeypatch):
    import sys

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # the process below is no xdist worker
    # a real process, as in `git diff --name-only origin/main... | pytest ... --npuprec-changed-files -`
    result = gated.run(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                       "--model", "qwen,bad", "--npuprec-changed-files", "-",
                       stdin=b"vllm_ascend/models/qwen3.py\nconfigs/good.yaml\n")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    assert _collected(result) == {"qwen"}
    result.stdout.fnmatch_lines(["PR gate: 2 changed path(s) select qwen; not affected: bad"])


def test_nothing_affected_exits_0_with_one_line(gated):
    (gated.path / "changed.txt").write_text("docs/index.md\nvllm_ascend/models/llama.py\n")
    result = gated.runpytest("-m", "npu", "--npuprec-changed-files", "changed.txt")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["PR gate: no model is affected by the 2 changed path(s) (3 model config(s) looked "
                                 "at); nothing to run"])
    # without the gate, an empty selection is still pytest's "no tests collected"
    assert gated.runpytest("-m", "npu", "--model", "good", "-k", "nothing-matches").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_changed_files_option_is_checked_when_parsed(gated):
    result = gated.runpytest("--npuprec-changed-files", "missing.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--npuprec-changed-files: missing.txt: no such file*"])


def test_invalid_gate_is_a_red_item_when_its_config_changes(gated):
    (gated.path / "configs" / "qwen.yaml").write_text(CONFIG.format(name="qwen", kl_max=1.0,
                                                                    extra="gate:\n  path: [x]\n"))
    (gated.path / "changed.txt").write_text("configs/qwen.yaml\n")
    result = gated.runpytest("-m", "npu", "--npuprec-changed-files", "changed.txt")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*qwen.yaml: gate.path: unknown key; expected one of: paths*"])


def test_selection_functions(tmp_path):
    from pytest_npuprec.selection import affected, read_changed_files, scan

    (tmp_path / "a.yaml").write_text(CONFIG.format(name="a", kl_max=1.0, extra=GATED))
    entry = scan(tmp_path)["a"]
    assert affected(entry, ["vllm_ascend/models/qwen3_next/model.py"], [tmp_path])  # * also crosses /
    assert not affected(entry, ["vllm_ascend/models/llama.py", "vllm_ascend/ops/rotary_embedding.pyc"], [tmp_path])
    assert affected(entry, ["a.yaml"], [tmp_path]) and not affected(entry, ["b/a.yaml"], [tmp_path])
    listing = tmp_path / "changed.txt"
    listing.write_text("# comment\n\n  x/y.py  \n")
    assert read_changed_files(str(listing)) == ["x/y.py"]


def test_configs_without_precision_sections(pytester):
    """Their configs before anyone adds a precision section: the PR gate has nothing to run (exit 0);
    an explicit --model all says why nothing can run."""
    configs = pytester.mkdir("configs")
    (configs / "lm-eval-only.yaml").write_text("model_name: org/x\ntasks: []\n")
    (pytester.path / "changed.txt").write_text("configs/lm-eval-only.yaml\n")
    gate = pytester.runpytest("-m", "npu", "--npuprec-config-dir", "configs", "--npuprec-changed-files", "changed.txt")
    assert gate.ret == pytest.ExitCode.OK
    gate.stdout.fnmatch_lines(["PR gate: no model is affected*nothing to run"])
    every = pytester.runpytest("--npuprec-config-dir", "configs", "--model", "all")
    assert every.ret == pytest.ExitCode.USAGE_ERROR
    every.stderr.fnmatch_lines(["*--model all: none of the 1 configs in *configs has a precision section*"])
    unknown = pytester.runpytest("--npuprec-config-dir", "configs", "--model", "Qwen3-8B")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--model Qwen3-8B: no config in *configs with that file name or model_name; "
                                  "known: lm-eval-only*"])


def test_readme_fixture_example_runs(repo):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "configs.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Writing your own precision tests"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("```\n", start)]
    (repo.path / "configs" / "tiny-llama.yaml").write_text(CONFIG.format(name="tiny-llama", kl_max=1.0, extra="")
                                                           .replace("kl_divergence: {max: 1.0}",
                                                                    "kl_divergence: [{max: 1.0, reduce: mean}, "
                                                                    "{max: 1.0, reduce: max}]"))
    repo.makepyfile(test_readme=code)
    result = repo.runpytest("test_readme.py", "--npuprec-report-dir", "reports")
    result.assert_outcomes(passed=1)


def test_a_config_folder_pytest_does_not_walk_is_named(repo):
    repo.mkdir("elsewhere")
    (repo.path / "elsewhere" / "test_other.py").write_text("def test_other():\n    pass\n")
    result = repo.runpytest("elsewhere", "--model", "good")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["note: --model good was asked for, but pytest did not walk *configs; run from the "
                                 "folder holding it, or pass that folder (or the YAML) as an argument"])
    result = repo.runpytest("configs/good.yaml")  # a YAML given as an argument runs without --model
    result.assert_outcomes(passed=5)


def test_a_drift_check_that_compared_nothing_is_a_skip_everywhere_ci_looks(repo, monkeypatch):
    """No device record: pytest's skip with the reason (terminal, JUnit, step summary, report), never a pass;
    --npuprec-require-records (the nightly) makes it red."""
    (repo.path / "configs" / "good.yaml").write_text(CONFIG.format(name="good", kl_max=1.0,
                                                                   extra="  drift: {kl_divergence: 50%}\n"))
    xml, summary = repo.path / "out.xml", repo.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    args = ["-m", "npu", "--model", "good", "--npuprec-report-dir", "reports", "--npuprec-baseline-dir", "baselines",
            "-rs", f"--junitxml={xml}"]
    result = repo.runpytest(*args)
    result.assert_outcomes(passed=5, skipped=1)
    reason = "not compared: no device record for cpu Test CPU under "
    result.stdout.fnmatch_lines([f"drift-kl_divergence * skipped ({reason}*", "overall: PASS (1 skipped: compared nothing)",
                                 f"SKIPPED [[]1[]] configs/good.yaml:1: good: drift of mean kl_divergence against the "
                                 f"device record for cpu Test CPU: skipped ({reason}*"])
    case = next(c for c in ET.parse(xml).getroot().iter("testcase") if c.get("name").endswith("drift-kl_divergence]"))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert case.find("skipped") is not None and reason in case.find("skipped").get("message")
    assert props["passed"] == "false" and props["skipped"].startswith(reason) and float(props["value"]) > 0
    report = json.loads((repo.path / "reports" / "good.json").read_text())
    drift = next(c for c in report["checks"] if c["check"] == "drift-kl_divergence")
    assert drift["skipped"].startswith(reason) and not drift["passed"] and report["skipped"] == ["drift-kl_divergence"]
    assert f"| drift-kl_divergence | {drift['value']:.6g} | no record to compare with | skipped ({reason}" \
        in summary.read_text()

    result = repo.runpytest(*args, "--npuprec-require-records")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines([f"good: drift of mean kl_divergence * Test CPU: FAILED: {reason}*; "
                                 "--npuprec-require-records: a check that compared nothing is red"])


def test_engine_processes_that_outlive_the_close_are_an_error_in_the_report_and_the_session(repo, monkeypatch):
    from pytest_npuprec.runners import device

    class StuckTree:
        def kill(self, wait_s=10.0):
            return ["VLLM::EngineCore (pid 4242)"], ["VLLM::EngineCore (pid 4242)"]

    def run_and_close(config, options):
        result = synthetic_run(config, options)
        device._shut_down([None], StuckTree(), True, config.name)  # the engine's close, SIGKILL not obeyed
        return result

    monkeypatch.setattr("pytest_npuprec.orchestrate.run_model", run_and_close)
    result = repo.runpytest("-m", "npu", "--model", "good", "--npuprec-report-dir", "reports")
    result.assert_outcomes(passed=5)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # every check passed, the session did not
    said = "engine process(es) still alive after the engine was shut down and killed: VLLM::EngineCore (pid 4242)"
    result.stdout.fnmatch_lines([f"ERROR: {said}", "overall: PASS", f"ERROR: good: {said}"])
    report = json.loads((repo.path / "reports" / "good.json").read_text())
    assert report["run"]["engine_survivors"] == ["VLLM::EngineCore (pid 4242)"]
    assert f"ERROR: {said}" in (repo.path / "reports" / "good.md").read_text()
