"""Every check kind, through the real engine: each stand-in passes all of its checks on a right device,
and a wrong device (or a wrong converter, or a checkpoint that is not ternary) fails the check kind
that should see it, with a message that says what and where."""
import json
import re

import pytest

from pytest_npuprec.config.loader import load_config

STANDINS = ["tiny-Qwen3Guard-Gen-4B", "tiny-Nanbeige4-3B-Thinking-2511", "tiny-BitCPM4-CANN-1B",
            "tiny-BitCPM4-0.5B", "tiny-BitCPM4-CANN-1B-unquantized"]


@pytest.mark.parametrize("model", STANDINS)
def test_standin_passes_every_check(run_suite, repo_config_dir, model):
    config = load_config(repo_config_dir / f"{model}.yaml")
    assert config.stand_in == model and config.checks.enabled(), "each stand-in exercises its report's check kinds"
    result, report_dir = run_suite(model)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-4000:]
    report = json.loads((report_dir / f"{model}.json").read_text())
    assert report["passed"]
    # CI runs the stand-ins on their committed baselines (baselines/<model>/): still valid for today's inputs
    assert report["run"]["reference_source"]["source"] == "baseline", report["run"]["reference_source"]
    assert [c["check"] for c in report["checks"]] == list(config.check_ids)
    result.stdout.fnmatch_lines([f"*{len(config.check_ids)} passed*"])


# (model, fault) -> the check kinds that must fail, and a piece of their message
FAULTED = {
    ("tiny-BitCPM4-CANN-1B", "nondeterminism"): {
        "determinism": r"determinism over 3 device runs at temperature 0: FAILED: run \d vs run 1: logits max \|diff\|"},
    ("tiny-BitCPM4-CANN-1B", "rmsnorm_offset=0.1"): {
        "perplexity": r"perplexity of .*: device [\d.]+ / reference [\d.]+ over \d+ tokens = ratio [\d.]+, .*FAILED"},
    # wrong RoPE base: the first token ("Safety") still agrees, the label does not
    ("tiny-Qwen3Guard-Gen-4B", "rope_theta=0.01"): {
        "labels": r"labels .* agree on \d/7 prompts: FAILED: \d device label\(s\) differ, first prompt guard-\S+: device "},
    ("tiny-Nanbeige4-3B-Thinking-2511", "rope_theta=0.01"): {
        "thinking": r"thinking .* agrees on \d/4 prompts: FAILED: \d device output\(s\) differ in thinking structure"},
}


@pytest.mark.parametrize("model, fault", list(FAULTED))
def test_wrong_device_fails_the_check_kind(run_suite, failed_checks, model, fault):
    result, _ = run_suite(model, "--npuprec-fault", fault)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-4000:]
    expected = FAULTED[(model, fault)]
    failed = failed_checks(result, model)
    assert set(expected) <= failed, f"{fault}: expected {sorted(expected)} to fail, failed: {sorted(failed)}"
    out = result.stdout.str()
    for check, message in expected.items():
        assert re.search(rf"{re.escape(model)}: {message}", out), (check, message)


def _ternary(folder, group_size):
    from pytest_npuprec.measure.kinds import measure_ternary
    from pytest_npuprec.config.schema import TernaryWeightsCheck
    from pytest_npuprec.verdicts.kinds import judge_ternary_weights

    check = TernaryWeightsCheck(group_size=group_size)
    return judge_ternary_weights(check, measure_ternary(folder, check))


def test_ternary_weights_on_disk():
    """Read from the safetensors files, no engine: the pseudo-quantized checkpoint passes; its QAT
    latent weights and a dense Llama do not."""
    from pytest_npuprec.standins import ensure_standin

    good = _ternary(ensure_standin("tiny-BitCPM4-CANN-1B"), -1)
    assert good.passed and good.n_values == 14, good.message  # 7 projections x 2 layers
    for dense in ("tiny-BitCPM4-CANN-1B-unquantized", "tiny-llama"):
        v = _ternary(ensure_standin(dense), -1)
        assert not v.passed and v.n_failing == 14 and "distinct values" in v.message, v.message


def test_wrong_qat_conversion_fails_qat_equivalence(tmp_path, repo_config_dir):
    """The converter run with group_size 32 on a per-tensor QAT checkpoint writes a loadable model
    that is not the one the fake-quant forward computes: qat_equivalence must say so."""
    import dataclasses

    from pytest_npuprec.capture.prompts import load_tokenizer, render_prompts
    from pytest_npuprec.orchestrate import RunOptions, measure_qat_equivalence
    from pytest_npuprec.verdicts.kinds import judge_qat_equivalence
    from pytest_npuprec.standins import ensure_standin

    config = load_config(repo_config_dir / "tiny-BitCPM4-CANN-1B-unquantized.yaml")
    checks = dataclasses.replace(config.checks, qat_equivalence=dataclasses.replace(
        config.checks.qat_equivalence, group_size=32))
    config = dataclasses.replace(config, precision=dataclasses.replace(config.precision, checks=checks))
    qat = ensure_standin(config.stand_in)
    prompts = render_prompts(config, load_tokenizer(qat, True))
    measured, converted = measure_qat_equivalence(config, RunOptions("cpu", [], tmp_path), qat, prompts)
    verdicts = judge_qat_equivalence(checks.qat_equivalence, measured)
    failed = {k for k, v in verdicts.items() if not v.passed}
    assert {"qat_equivalence-cosine_similarity-min", "qat_equivalence-max_abs_diff"} <= failed, failed
    message = verdicts["qat_equivalence-max_abs_diff"].message
    assert re.search(r"QAT fake-quant vs converted \(FP32\): max_abs_diff max = [\d.]+, threshold <= 0.2: FAILED", message)
    # what the wrong converter wrote is ternary per group of 32, not per tensor
    assert _ternary(converted, 32).passed and not _ternary(converted, -1).passed
