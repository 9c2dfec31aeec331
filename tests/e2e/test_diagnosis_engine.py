"""The layer-by-layer diagnosis on a real engine: a fault planted in one decoder layer and block of the 4-layer
stand-in fails the logit checks, and the diagnosis (run by default on that failure) names that layer and block; a
router fault and an expert fault in one MoE layer are named router and experts; a fault in one vision block is
named at that block of the tower."""
from __future__ import annotations

import json
from pathlib import Path

DEEP_CONFIGS = Path(__file__).parent / "data" / "diagnose_configs"
MODEL = "tiny-llama-deep"


def test_a_one_layer_fault_is_named_at_its_layer_and_block(run_suite, failed_checks):
    result, report_dir = run_suite(MODEL, "--npuprec-fault", "layer_scale=1.25:layer=2:block=mlp",
                                   "--npuprec-diagnose", "auto", config_dir=DEEP_CONFIGS)
    assert {"kl_divergence-mean", "relative_l2-mean"} <= failed_checks(result, MODEL), result.stdout.str()[-3000:]
    diagnosis = json.loads((report_dir / f"{MODEL}.json").read_text())["diagnosis"]
    assert "error" not in diagnosis, diagnosis.get("error")
    assert (diagnosis["first_divergent_layer"], diagnosis["block"]) == (2, "mlp"), diagnosis["message"]
    layers = diagnosis["layers"]
    assert [entry["output"]["diverged"] for entry in layers[:2]] == [False, False]  # before it: at the floor
    assert not layers[2]["attention"]["diverged"] and layers[2]["mlp"]["diverged"]
    assert set(layers[2]["output"]["device"]) == {"Cosine", "MaxAbsErr", "MaxRelativeErr",
                                                  "One Thousandth Err Ratio", "RelL2"}
    result.stdout.fnmatch_lines(["*first divergent layer: 2 (*); mlp moved it*"])
    assert "## Layer by layer" in (report_dir / f"{MODEL}.md").read_text()


MOE = "tiny-Qwen3-30B-A3B"
MOE_TEXT = ("The capital of France is Paris, a city on the river Seine. Once upon a time there was a king who had "
            "three sons and a garden")


def _layer_rows(side_paths):
    from pytest_npuprec.measure.layers import load_layers

    return {side: load_layers(path) for side, path in side_paths.items()}


def test_moe_router_and_expert_faults_in_one_layer_are_named_router_and_experts(tmp_path):
    """The 2-layer MoE stand-in, layer 1's router made wrong (router_lowprec: other experts chosen) or its experts
    (expert_scale: the same experts, expert 0 weighing double): the diagnosis's capture, measure and rule on an
    eager engine name "layer 1, router" and "layer 1, experts", layer 0 at its floor. The rerun's own machinery
    (capture/diagnosis.py), without the precision run around it (the vision test below goes through the plugin);
    the reference and the floor are scored once for both faults."""
    import dataclasses

    from pytest_npuprec.capture.diagnosis import capture_layers
    from pytest_npuprec.capture.prompts import load_tokenizer
    from pytest_npuprec.config.loader import load_config
    from pytest_npuprec.measure.layers import measure_layers
    from pytest_npuprec.runners.device import Fault, VllmRunner
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.standins import ensure_standin
    from pytest_npuprec.verdicts.layers import judge_layers

    path = ensure_standin(MOE)
    serve = dataclasses.replace(load_config(DEEP_CONFIGS / f"{MOE}-diag.yaml").serve, enforce_eager=True)
    tokens = list(load_tokenizer(path, False).encode(MOE_TEXT))
    positions = list(range(4, len(tokens) - 1))
    clean = capture_layers(tokens, positions, {"reference": lambda: TransformersRunner(path, False),
                                               "floor": lambda: TransformersRunner(path, False, dtype="bfloat16")},
                           tmp_path / "clean")
    for spec, where in [("router_lowprec=0.3:layer=1", "layer 1, router"),
                        ("expert_scale=2:layer=1", "layer 1, experts")]:
        fault = Fault.parse(spec)
        engine = lambda fault=fault: VllmRunner(path, serve, "cpu", fault, model=MOE)  # noqa: E731
        device = capture_layers(tokens, positions, {"device": engine}, tmp_path / fault.name)
        assert device.info["device"]["fault"].endswith("in MoE layer 1"), device.info["device"]
        arrays = _layer_rows({**clean.layers, **device.layers})
        rows = measure_layers(arrays["device"], arrays["reference"], arrays["floor"])
        judged = judge_layers(rows)
        assert judged.where == where, judged.message
        assert not judged.judged[0].diverged["output"] and not judged.judged[1].diverged["attention"]
        flips = rows[1].routes["device"]["flips_beyond_ties"]
        assert (flips > 0) if fault.name == "router_lowprec" else (flips == 0), rows[1].routes
        assert rows[0].routes["device"]["flips_beyond_ties"] == 0  # layer 0's router is left alone


VL = "tiny-Qwen3-VL-8B-Instruct-diag"


def test_a_fault_in_one_vision_block_is_named_at_that_block(run_suite):
    """tiny-Qwen3-VL-8B-Instruct (2 vision blocks), vision block 1's attention output x1.5: its logits stay inside
    their bounds (the tower's error is diluted by the text), and `--npuprec-diagnose always` names vision block 1,
    attention, block 0 at its floor, in the JSON, the terminal, the Markdown and the HTML report's charts."""
    result, report_dir = run_suite(VL, "--npuprec-fault", "vision_scale=1.5:layer=1:block=attention",
                                   "--npuprec-diagnose", "always", config_dir=DEEP_CONFIGS)
    diagnosis = json.loads((report_dir / f"{VL}.json").read_text())["diagnosis"]
    assert "error" not in diagnosis, diagnosis.get("error")
    assert (diagnosis["where"], diagnosis["first_divergent_vision_block"], diagnosis["block"]) == \
        ("vision block 1, attention", 1, "attention"), diagnosis["message"]
    blocks = diagnosis["vision_blocks"]
    assert [b["output"]["diverged"] for b in blocks] == [False, True] and blocks[1]["attention"]["diverged"]
    assert diagnosis["device"]["fault"] == "vision block 1 attention output x1.5"
    result.stdout.fnmatch_lines(["*first divergent: vision block 1 (*); attention moved it*",
                                 "vision 1  attention *YES"])
    assert "| vision 1 | attention |" in (report_dir / f"{VL}.md").read_text()
    assert "each vision block" in (report_dir / f"{VL}.html").read_text()
