"""A 32k-context config with a long prompt runs, capturing only the positions the checks need."""
import json

import numpy as np
import pytest
import yaml

LONG_TOKENS = 12_000


@pytest.fixture
def long_config_dir(pytester, tiny_llama):
    from transformers import AutoTokenizer

    from pytest_npuprec.standins import corpus

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    words = " ".join(corpus.documents()).split()
    prompt, n = [], 0
    while n < LONG_TOKENS:
        prompt.extend(words)
        n = len(tokenizer(" ".join(prompt))["input_ids"])
    config = {
        "model_name": "npuprec/tiny-llama",
        "stand_in": "tiny-llama",
        "serve": {"dtype": "bfloat16", "max_model_len": 32768, "enforce_eager": True},
        "precision": {
            "max_tokens": 16,
            "prompts": [" ".join(prompt), "The capital of France is"],
            # seed-report thresholds: the point here is that a 32k context runs and stays bounded
            "thresholds": {"token_agreement": {"min": 0.99}, "cosine_similarity": {"min": 0.999},
                           "kl_divergence": {"max": 0.01}},
        },
    }
    folder = pytester.path / "configs"  # collected by the plugin: nothing else is needed
    folder.mkdir()
    (folder / "tiny-llama-32k.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_long_prompt_in_a_32k_context(pytester, tmp_path, long_config_dir):
    report_dir = tmp_path / "reports"
    result = pytester.runpytest_subprocess("-m", "npu", "--model", "tiny-llama-32k", "--config-dir",
                                           str(long_config_dir), "--npuprec-report-dir", str(report_dir),
                                           "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    report = json.loads((report_dir / "tiny-llama-32k.json").read_text())
    long = report["prompts"][0]
    assert long["prompt_tokens"] >= LONG_TOKENS
    # only the continuation is scored: max_tokens rows, not one per prompt token
    assert long["scored_positions"]["count"] <= 16
    assert long["scored_positions"]["first"] == long["prompt_tokens"] - 1
    capture = report_dir / "captures" / "tiny-llama-32k"
    for side in ("device", "reference"):
        rows = np.load(capture / f"{side}-000.npy", mmap_mode="r")
        assert rows.shape == (long["scored_positions"]["count"], report["vocab_size"])
