"""prefix_cache: config (defaults from the model's bounds, what it cannot run with), its prompts, the worker's view
of which rows continue computed tokens (the prefix_only fault), and the verdict."""
import re
import types

import numpy as np
import pytest

from pytest_npuprec.config.loader import ConfigError, load_config

BASE = """
model_name: "org/M"
serve: {max_model_len: 1024}
precision:
  max_tokens: 8
  prompts: ["plain", "other"]
  thresholds:
    cosine_similarity: {min: 0.999}
    max_abs_diff: {max: 0.25, reduce: max}
  checks:
"""


def load(tmp_path, text):
    path = tmp_path / "M.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def error(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_prefix_cache_parses_with_the_models_floor_as_default(tmp_path):
    c = load(tmp_path, BASE + "    prefix_cache: {}\n")
    check = c.checks.prefix_cache
    assert (check.prefix_tokens, check.prefix, check.prompts, check.max_abs_diff) == (512, None, None, 0.25)
    assert check.thresholds == c.thresholds
    assert c.check_ids[-1] == "prefix_cache"
    c = load(tmp_path, BASE + "    prefix_cache: {prefix_tokens: 300, prefix: 'some text', prompts: [p2], "
                              "max_abs_diff: 0.5, thresholds: {kl_divergence: {max: 1.0e-3}}}\n")
    check = c.checks.prefix_cache
    assert (check.prefix_tokens, check.prefix, check.prompts, check.max_abs_diff) == (300, "some text", ("p2",), 0.5)
    # its own kl bound replaces the model's kl bounds (none here); the model's other bounds stay
    assert [(t.metric, t.bound, t.value) for t in check.thresholds] == [
        ("cosine_similarity", "min", 0.999), ("max_abs_diff", "max", 0.25), ("kl_divergence", "max", 1e-3)]


@pytest.mark.parametrize("checks, serve, key, expected", [
    ("{prefix_tokens: 0}", "", "precision.checks.prefix_cache.prefix_tokens", "positive integer"),
    ("{prefix_tokens: 1020}", "", "precision.checks.prefix_cache.prefix_tokens", "exceeds serve.max_model_len 1024"),
    ("{prompts: [nope]}", "", "precision.checks.prefix_cache.prompts[0]", "unknown prompt id"),
    ("{prefix: ' '}", "", "precision.checks.prefix_cache.prefix", "empty"),
    ("{size: 3}", "", "precision.checks.prefix_cache.size", "unknown key"),
    ("{thresholds: {kl: {max: 1}}}", "", "precision.checks.prefix_cache.thresholds", "kl"),
    ("{}", "  enable_prefix_caching: false\n", "precision.checks.prefix_cache",
     "serve.enable_prefix_caching is false"),
])
def test_prefix_cache_config_errors_name_the_key(tmp_path, checks, serve, key, expected):
    text = BASE.replace("serve: {max_model_len: 1024}\n", "serve:\n  max_model_len: 1024\n" + serve)
    message = error(tmp_path, text + f"    prefix_cache: {checks}\n")
    assert "M.yaml" in message and key in message and expected in message, message


def test_prefix_cache_without_a_bound_to_default_to(tmp_path):
    text = BASE.replace("    max_abs_diff: {max: 0.25, reduce: max}\n", "")
    message = error(tmp_path, text + "    prefix_cache: {}\n")
    assert "precision.checks.prefix_cache.max_abs_diff" in message and "no max_abs_diff bound" in message


def test_prefix_cache_prompts_share_exactly_the_prefix(tmp_path, tiny_llama_tokenizer):
    from pytest_npuprec.capture.prefix_cache import prefix_cache_inputs, shared_prefix
    from pytest_npuprec.capture.prompts import render_prompts

    config = load(tmp_path, BASE + "    prefix_cache: {prefix_tokens: 200}\n")
    prompts = render_prompts(config, tiny_llama_tokenizer)
    inputs = prefix_cache_inputs(config, tiny_llama_tokenizer, prompts, 7)
    assert [(p.index, p.id, p.kind) for p in inputs] == [(7, "prefix-p1", "prefix_cache"), (8, "prefix-p2", "prefix_cache")]
    bos = tiny_llama_tokenizer.bos_token_id
    for p, original in zip(inputs, prompts):
        suffix = original.token_ids[1:] if bos is not None and original.token_ids[0] == bos else original.token_ids
        assert p.token_ids[200:] == suffix and len(suffix) > 0  # a BOS (if any) only at the start of the prefix
    assert len(shared_prefix(inputs)) >= 200 and len(shared_prefix(inputs[:1])) == len(inputs[0].token_ids) - 1


@pytest.fixture(scope="module")
def tiny_llama_tokenizer():
    from pytest_npuprec.capture.prompts import load_tokenizer
    from pytest_npuprec.standins import ensure_standin

    return load_tokenizer(ensure_standin("tiny-llama"), False)


def test_prefix_only_fault_picks_prefills_that_continue_computed_tokens():
    from pytest_npuprec.runners.prefix_fault import continued_prefill_rows

    # four requests: a cold prefill (0 computed, 5 new), a decode step (9 computed, 1 new), a prefill after a
    # prefix cache hit (256 computed, 7 new), a second chunk of a chunked prefill (512 computed, 3 new)
    batch = types.SimpleNamespace(req_ids=["a", "b", "c", "d"], num_computed_tokens_cpu=np.array([0, 9, 256, 512, 0]))
    runner = types.SimpleNamespace(input_batch=batch, query_start_loc=types.SimpleNamespace(np=np.array([0, 5, 6, 13, 16, 0])))
    assert continued_prefill_rows(runner) == [(6, 13), (13, 16)]


def _measured(cached, warm_diff, kl):
    from pytest_npuprec.measure.prefix_cache import PrefixCacheMeasurement
    from pytest_npuprec.measure.thresholds import Cells, Measurements, PromptSummary

    summary = PromptSummary(0, "prefix-p1", "512 shared tokens + plain", 515, (514, 515), (), (), "match", 0,
                            "match")
    cells = {"kl_divergence": Cells(np.array([kl, kl / 2]), np.array([0, 0]), np.array([514, 515]))}
    return PrefixCacheMeasurement(512, cached, 2, warm_diff, "prefix-p1", 515,
                                  Measurements("M", cells, [summary], [], 1024))


def test_prefix_cache_verdict():
    from pytest_npuprec.config.schema import PrefixCacheCheck, Threshold
    from pytest_npuprec.verdicts.steps import judge_prefix_cache

    bounds = (Threshold("kl_divergence", "max", 1e-4, "max", id="kl_divergence"),
              Threshold("token_agreement", "min", 0.99, "mean", id="token_agreement"))
    check = PrefixCacheCheck(max_abs_diff=0.25, thresholds=bounds)
    good = judge_prefix_cache(check, _measured({"prefix-p1": 512}, 0.06, 2e-5))
    assert good.passed and "tokens read from the cache: prefix-p1: 512" in good.message, good.message
    warm = judge_prefix_cache(check, _measured({"prefix-p1": 512}, 0.9, 5e-3))
    assert not warm.passed and re.search(r"warm vs cold: logits max \|diff\| 0.9 misses max \|diff\| <= 0.25 at prompt "
                                         r"prefix-p1 position 515", warm.message), warm.message
    assert "warm vs reference: kl_divergence max = 0.005, threshold <= 0.0001: FAILED" in warm.message
    cold = judge_prefix_cache(check, _measured({"prefix-p1": 0}, 0.0, 2e-5))
    assert not cold.passed and "read no token from the prefix cache (first: prefix-p1)" in cold.message
    nan = judge_prefix_cache(check, _measured({"prefix-p1": 512}, float("nan"), 2e-5))
    assert not nan.passed and "NaN/Inf never agree" in nan.message
