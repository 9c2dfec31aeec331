"""precision.reference_scoring: device with reference_memory: streamed, through the real engine: the device
generates first, the layer-streamed FP32 reference scores the device's sequences in one pass and generates
nothing; a clean device passes, a device with a broken RoPE fails the token checks."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama-onepass"


@pytest.fixture
def onepass_configs(tmp_path):
    """tiny-llama.yaml with three prompts, 16 tokens, the one-pass streamed reference; no drift (its device
    records are of the default mode's inputs) and no batch_invariance (not what this tests)."""
    text = (REPO / "tests" / "e2e" / "models" / "configs" / "tiny-llama.yaml").read_text()
    text = text.replace("max_tokens: 32", "max_tokens: 16")
    text = re.sub(r'    - "The quick brown fox"\n    - "Once upon a time"\n', "", text)
    text = text[: text.index("  # drift against")]
    text += "  reference_scoring: device\n  reference_memory: streamed\n"
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / f"{MODEL}.yaml").write_text(text)
    return folder


def test_one_streamed_pass_passes_a_clean_device(run_suite, onepass_configs):
    result, report_dir = run_suite(MODEL, config_dir=onepass_configs)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    reference = report["run"]["reference"]
    assert reference["memory"] == "streamed" and reference["bytes_read"] == reference["pass_bytes"]
    assert report["run"]["reference_scoring"] == "device"
    assert "reference_s" in report["run"]["timings"] and report["run"]["timings"]["reference_s"] > 0


def test_one_streamed_pass_fails_a_wrong_device(run_suite, failed_checks, onepass_configs):
    result, _ = run_suite(MODEL, "--npuprec-fault", "rope_theta=0.01", config_dir=onepass_configs)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    assert {"token_agreement", "prefix_agreement", "kl_divergence-mean"} <= failed_checks(result, MODEL)
