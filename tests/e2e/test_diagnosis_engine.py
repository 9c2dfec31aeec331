"""The layer-by-layer diagnosis on a real engine: a fault planted in one decoder layer and block of the 4-layer
stand-in fails the logit checks, and the diagnosis (run by default on that failure) names that layer and block."""
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
