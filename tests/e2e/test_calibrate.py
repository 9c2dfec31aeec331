"""--npuprec-calibrate through the real engine, in two pytest runs:

1. calibrate two copies of tiny-llama in one session: `tiny-llama` with its thresholds removed (bounds are written:
   its item passes, every other line of the file survives), and `onboard-llama`, a vllm-ascend-style copy with no
   precision: section at all, whose device carries a softmax-scale fault (x1.25): the default prompts are used,
   the calibration is refused naming the metrics, and its file is left byte for byte as it was;
2. a plain run of the calibrated tiny-llama: every check passes with the bounds just written.
"""
import time
from pathlib import Path

import pytest

from pytest_npuprec.config.loader import load_config

FAULT = "attention_scale=1.25"
REPO = Path(__file__).resolve().parents[2]


def _without(text, key, indent):
    """The YAML text without `key:` (at `indent` spaces) and the lines indented below it."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(" " * indent + f"{key}:"):
            skipping = True
            continue
        if skipping and (line.startswith(" " * (indent + 1)) or not line.strip()):
            continue
        skipping = False
        out.append(line)
    return "".join(out)


def _is_subsequence(lines, within):
    it = iter(within)
    return all(line in it for line in lines)


def test_calibrate_writes_bounds_the_next_run_passes_and_refuses_a_faulty_device(pytester, tmp_path, repo_config_dir):
    configs = pytester.path / "configs"
    configs.mkdir()
    original = (repo_config_dir / "tiny-llama.yaml").read_text()
    stripped = _without(original, "thresholds", 2)
    assert "thresholds" not in stripped.split("precision:")[1].split("drift:")[0]
    (configs / "tiny-llama.yaml").write_text(stripped)
    # eager: this copy's engine skips torch.compile (its verdict is the refusal, not the compiled path)
    onboard = _without(original, "precision", 0).replace("enforce_eager: false", "enforce_eager: true")
    assert "precision" not in onboard.replace("# ", "").split("serve:")[1]
    (configs / "onboard-llama.yaml").write_text(onboard)
    common = ["-m", "npu", "--npuprec-config-dir", "configs", "-p", "no:cacheprovider",
              "--npuprec-baseline-dir", str(REPO / "baselines")]

    started = time.perf_counter()
    result = pytester.runpytest_subprocess(*common, "--npuprec-model", "tiny-llama,onboard-llama",
                                           "--npuprec-report-dir", str(tmp_path / "calibrate"), "--npuprec-calibrate",
                                           "--npuprec-fault", f"{FAULT}@onboard-llama")
    calibrate_s = time.perf_counter() - started
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAILED *onboard-llama.yaml::test_precision[[]onboard-llama-calibrate[]]*"])
    assert "onboard-llama: REFUSED to write bounds" in out
    for metric in ("cosine_similarity mean", "kl_divergence mean", "relative_l2 max", "max_abs_diff max"):
        assert f"{metric}: device" in out, metric
    assert (configs / "onboard-llama.yaml").read_text() == onboard
    result.stdout.fnmatch_lines(["*tiny-llama: calibration, factor 3*", "*metric*floor mean*worst*device mean*worst*",
                                 "*kl_divergence *<= *", "*tiny-llama: wrote precision.thresholds to *"])

    written = (configs / "tiny-llama.yaml").read_text()
    assert _is_subsequence(stripped.splitlines(), written.splitlines())  # comments, order, quoting: every line kept
    assert "# calibrated by pytest-npuprec" in written
    model = load_config(configs / "tiny-llama.yaml")
    assert {(t.metric, t.reduce) for t in model.thresholds} >= {("cosine_similarity", "mean"), ("kl_divergence", "max")}

    started = time.perf_counter()
    result = pytester.runpytest_subprocess(*common, "--npuprec-model", "tiny-llama",
                                           "--npuprec-report-dir", str(tmp_path / "plain"))
    plain_s = time.perf_counter() - started
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == len(model.check_ids) and not outcomes.get("failed")
    print(f"calibrate: {calibrate_s:.1f} s, plain run: {plain_s:.1f} s")
