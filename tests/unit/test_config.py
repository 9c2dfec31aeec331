from pathlib import Path

import pytest

from pytest_npuprec.config.loader import ConfigError, load_config, select_configs
from pytest_npuprec.metrics.registry import METRICS

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "e2e" / "models" / "configs"

VALID = """
model_name: "org/Some-Model-7B"
hardware: "Atlas A2 Series"
serve:
  dtype: bfloat16
  max_model_len: 4096
  trust_remote_code: true
precision:
  max_tokens: 8
  prompts:
    - "plain text"
    - id: chat
      messages:
        - {role: system, content: "be brief"}
        - {role: user, content: "hi"}
  thresholds:
    token_agreement: {min: 0.99}
    cosine_similarity:
      - {min: 0.999, reduce: mean}
      - {min: 0.99, reduce: min}
    kl_divergence: {max: 0.01}
tasks:
- name: "gsm8k"
  metrics:
  - name: "exact_match,strict-match"
    value: 0.765
num_fewshot: 5
"""


def write(tmp_path: Path, text: str, name: str = "Some-Model-7B") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_valid_config_loads(tmp_path):
    c = load_config(write(tmp_path, VALID))
    assert c.name == "Some-Model-7B" and c.model_name == "org/Some-Model-7B"
    assert c.serve.trust_remote_code and c.serve.max_model_len == 4096
    assert [p.id for p in c.precision.prompts] == ["p1", "chat"]
    assert c.precision.prompts[1].messages[1].content == "hi"
    assert [t.id for t in c.thresholds] == ["token_agreement", "cosine_similarity-mean", "cosine_similarity-min",
                                            "kl_divergence"]
    assert c.thresholds[3].bound == "max" and c.thresholds[3].reduce == "mean"
    assert c.lm_eval["num_fewshot"] == 5  # vllm-ascend's lm_eval keys are kept


@pytest.mark.parametrize("old, new, key, expected", [
    ("cosine_similarity:", "cosine_simlarity:", "precision.thresholds.cosine_simlarity", "unknown metric"),
    ("max_tokens: 8", "max_tokns: 8", "precision.max_tokns", "unknown key"),
    ("max_tokens: 8", "max_tokens: eight", "precision.max_tokens", "expected an integer, got str"),
    ("max_tokens: 8", "max_tokens: 0", "precision.max_tokens", "positive integer"),
    ("{min: 0.99}", "{min: 1.5}", "precision.thresholds.token_agreement.min", "impossible bound 1.5"),
    ("kl_divergence: {max: 0.01}", "kl_divergence: {max: -0.1}", "precision.thresholds.kl_divergence.max",
     "impossible bound"),
    ("kl_divergence: {max: 0.01}", "kl_divergence: {min: 0.01}", "precision.thresholds.kl_divergence.min",
     "lower-is-better; expected a `max` bound"),
    ("{min: 0.99, reduce: min}", "{min: 0.99, reduce: median}", "precision.thresholds.cosine_similarity[1].reduce",
     "expected one of mean, min, max"),
    ("{min: 0.99, reduce: min}", "{min: 0.99, reduce: mean}", "precision.thresholds.cosine_similarity",
     "same reduce"),
    ("trust_remote_code: true", "trust_remote_code: yes please", "serve.trust_remote_code", "true/false"),
    ("dtype: bfloat16", "dtype: int4", "serve.dtype", "expected one of"),
    ("role: system", "role: robot", "precision.prompts[1].messages[0].role", "expected one of system"),
    ("token_agreement: {min: 0.99}", "token_agreement: {min: true}", "precision.thresholds.token_agreement.min",
     "expected a number, got bool"),
])
def test_bad_input_names_file_key_and_expectation(tmp_path, old, new, key, expected):
    assert old in VALID
    message = error_of(tmp_path, VALID.replace(old, new, 1))
    assert str(tmp_path / "Some-Model-7B.yaml") in message
    assert f": {key}: " in message
    assert expected in message


def test_missing_sections_and_empty_file(tmp_path):
    assert "model_name: missing" in error_of(tmp_path, "hardware: x\n")
    assert "the file is empty" in error_of(tmp_path, "")
    assert "not valid YAML" in error_of(tmp_path, "model_name: [unclosed\n")
    msg = error_of(tmp_path, "model_name: a/b\nprecision:\n  max_tokens: 4\n  prompts: [x]\n")
    assert "precision.thresholds: missing" in msg


def test_legacy_top_level_serve_keys(tmp_path):
    c = load_config(write(tmp_path, "model_name: a/b\nmax_model_len: 1024\ngpu_memory_utilization: 0.6\n"))
    assert c.serve.max_model_len == 1024 and c.serve.gpu_memory_utilization == 0.6 and c.precision is None
    msg = error_of(tmp_path, "model_name: a/b\nmax_model_len: 1024\nserve:\n  max_model_len: 2048\n")
    assert "max_model_len: set both at the top level" in msg


def test_duplicate_prompt_ids(tmp_path):
    msg = error_of(tmp_path, VALID.replace("id: chat", "id: p1"))
    assert "prompt id 'p1' is used twice" in msg


def test_select_by_stem_model_name_and_all(tmp_path):
    write(tmp_path, VALID)
    write(tmp_path, "model_name: org/lm-eval-only\n", name="lm-eval-only")
    assert [c.name for c in select_configs(tmp_path, ["Some-Model-7B"])] == ["Some-Model-7B"]
    assert [c.name for c in select_configs(tmp_path, ["org/Some-Model-7B"])] == ["Some-Model-7B"]
    assert [c.name for c in select_configs(tmp_path, ["all"])] == ["Some-Model-7B"]
    with pytest.raises(ConfigError, match="no config with that name"):
        select_configs(tmp_path, ["nope"])
    with pytest.raises(ConfigError, match="has no precision section"):
        select_configs(tmp_path, ["lm-eval-only"])


def test_engine_kwargs_pass_only_what_is_set(tmp_path):
    c = load_config(write(tmp_path, VALID))
    kwargs = c.serve.engine_kwargs()
    assert kwargs["dtype"] == "bfloat16" and kwargs["trust_remote_code"] is True
    assert "gpu_memory_utilization" not in kwargs and "enable_thinking" not in kwargs


def test_every_repo_config_is_valid():
    paths = sorted(REPO_CONFIGS.glob("*.yaml"))
    assert paths, REPO_CONFIGS
    for path in paths:
        config = load_config(path)
        assert all(t.metric in METRICS for t in config.thresholds)
