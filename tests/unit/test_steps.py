"""Step logits without an engine: rows of a compute_logits call mapped to requests and positions (and the rows of a
teacher-forced scoring batch), the decode rows judged over the agreed prefix only, step agreement (batch_invariance,
graph_mode), and their config."""
from __future__ import annotations

import re
import types

import numpy as np
import pytest
import torch

from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput
from pytest_npuprec.capture.steps import ALONE, REVERSED, steps_side
from pytest_npuprec.config.loader import ConfigError, load_config
from pytest_npuprec.config.schema import BatchInvarianceCheck
from pytest_npuprec.measure.steps import decode_rows, measure_batch_invariance, measure_decode
from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.runners.step_logits import StepCapture, batch_only, decode_only, graph_only
from pytest_npuprec.verdicts.steps import judge_batch_invariance, judge_decode

VOCAB = 16


class FakeModel:
    def compute_logits(self, hidden):
        return hidden.clone()


def fake_runner(req_ids, computed, scheduled, prompt_lens):
    qsl = np.concatenate([[0], np.cumsum(scheduled)]).astype(np.int32)
    batch = types.SimpleNamespace(req_ids=list(req_ids), num_computed_tokens_cpu=np.array(computed),
                                  num_prompt_tokens=np.array(prompt_lens))
    return types.SimpleNamespace(input_batch=batch, query_start_loc=types.SimpleNamespace(np=qsl))


def test_rows_map_to_requests_and_positions_and_are_written_per_request(tmp_path):
    model = FakeModel()
    runner = fake_runner(["0-ab12cd34", "1-ef56ab78"], [0, 0], [5, 3], [5, 3])
    capture = StepCapture(model, runner)
    capture.arm()
    first = torch.randn(2, VOCAB)
    model.compute_logits(first)  # prefill of both: positions 4 and 2
    runner.input_batch.num_computed_tokens_cpu = np.array([5, 3])
    runner.query_start_loc.np = np.array([0, 1, 2], dtype=np.int32)
    second = torch.randn(2, VOCAB)
    model.compute_logits(second)  # one decode step each: positions 5 and 3
    paths = {"0": str(tmp_path / "a.npy"), "1": str(tmp_path / "b.npy")}
    result = capture.collect(paths, write=True)
    assert result == {"requests": {"0": {"first": 4, "rows": 2}, "1": {"first": 2, "rows": 2}}}
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), torch.stack([first[0], second[0]]).numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), torch.stack([first[1], second[1]]).numpy())


def test_rows_that_are_not_one_per_request_are_a_problem_not_a_guess(tmp_path):
    model = FakeModel()
    capture = StepCapture(model, fake_runner(["0-x"], [0], [5], [5]))
    capture.arm()
    model.compute_logits(torch.randn(3, VOCAB))  # e.g. speculative decoding: 3 rows for 1 request
    result = capture.collect({"0": str(tmp_path / "a.npy")}, write=True)
    assert "3 rows for 1 requests" in result["problem"] and not (tmp_path / "a.npy").exists()


def test_other_ranks_do_not_write(tmp_path):
    model = FakeModel()
    capture = StepCapture(model, fake_runner(["0-x"], [0], [4], [4]))
    capture.arm()
    model.compute_logits(torch.randn(1, VOCAB))
    assert capture.collect({"0": str(tmp_path / "a.npy")}, write=False)["requests"]["0"]["rows"] == 1
    assert not (tmp_path / "a.npy").exists()


def test_decode_fault_touches_decode_rows_only_and_keeps_the_top_token():
    model = FakeModel()
    runner = fake_runner(["0-x", "1-y"], [5, 0], [1, 4], [5, 4])  # request 0 decodes, request 1 is in prefill
    decode_only(StepCapture(model, runner), 0.05)
    hidden = torch.randn(2, VOCAB)
    out = model.compute_logits(hidden)
    assert torch.equal(out[1], hidden[1]) and not torch.equal(out[0], hidden[0])
    assert out[0].argmax() == hidden[0].argmax()


def test_graph_fault_touches_a_compiled_engines_decode_rows_and_nothing_of_an_eager_one():
    for eager in (True, False):
        model = FakeModel()
        runner = fake_runner(["0-x"], [5], [1], [5])  # one decode row
        runner.model_config = types.SimpleNamespace(enforce_eager=eager)
        said = graph_only(StepCapture(model, runner), 0.05)
        hidden = torch.randn(1, VOCAB)
        out = model.compute_logits(hidden)
        assert torch.equal(out, hidden) == eager and ("nothing injected" in said) == eager, said
        assert out.argmax() == hidden.argmax()


def test_batch_fault_leaves_a_request_alone_untouched():
    model = FakeModel()
    batch_only(StepCapture(model, fake_runner(["0-x"], [5], [1], [5])), 0.05)
    hidden = torch.randn(1, VOCAB)
    assert torch.equal(model.compute_logits(hidden), hidden)
    model2 = FakeModel()
    batch_only(StepCapture(model2, fake_runner(["0-x", "1-y"], [5, 5], [1, 1], [5, 5])), 0.05)
    hidden = torch.randn(2, VOCAB)
    out = model2.compute_logits(hidden)
    assert not torch.equal(out, hidden) and torch.equal(out.argmax(-1), hidden.argmax(-1))


def _capture(folder, ref_tokens, dev_tokens, ref, steps, extra=None) -> ModelCapture:
    """One prompt of 3 tokens; reference teacher-forced rows `ref`; the device's own step rows `steps`."""
    writer = CaptureWriter(folder)
    prompt = PromptInput(index=0, id="p1", label="p1", token_ids=(1, 2, 3))
    positions = tuple(range(2, 2 + len(ref_tokens)))
    np.save(writer.logits_path("reference", 0), ref.astype(np.float32))
    np.save(writer.logits_path("device", 0), ref.astype(np.float32))
    np.save(writer.logits_path(steps_side("device"), 0), steps.astype(np.float32))
    generated = {"reference": ref_tokens, "device": dev_tokens}
    for side, (tokens, rows) in (extra or {}).items():
        generated[side] = tokens
        np.save(writer.logits_path(steps_side(side), 0), rows.astype(np.float32))
    record = PromptCapture(prompt, prompt.token_ids + ref_tokens, positions, generated, {})
    return writer.finish(ModelCapture("toy", [record], {}))


def test_decode_rows_stop_at_the_first_divergence(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, VOCAB))
    cap = _capture(tmp_path / "c", (1, 2, 3, 4, 5, 6), (1, 2, 9, 9, 9, 9), ref, ref.copy())
    # row k is computed from the first k generated tokens: rows 1 and 2 (tokens 1, 2 agree), not 3+
    np.testing.assert_array_equal(decode_rows(cap.prompts[0]), [1, 2])


def test_decode_metrics_see_an_error_in_decode_rows_only(tmp_path):
    from pytest_npuprec.config.schema import Threshold

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(6, VOCAB))
    steps = ref.copy()
    steps[0] += 5.0  # the prefill row of the generation: not a decode row, not judged here
    tokens = (1, 2, 3, 4, 5, 6)
    cosine = Threshold("cosine_similarity", "min", 0.999, "min", id="cosine_similarity-decode", phase="decode")
    clean = _capture(tmp_path / "a", tokens, tokens, ref, steps)
    verdict = judge_decode((cosine,), measure_decode(clean, measure(clean)))[cosine.id]
    assert verdict.passed and verdict.n_values == 5, verdict.message

    steps[3] = -steps[3]  # a decode step gone wrong
    bad = _capture(tmp_path / "b", tokens, tokens, ref, steps)
    verdict = judge_decode((cosine,), measure_decode(bad, measure(bad)))[cosine.id]
    assert not verdict.passed and verdict.worst["position"] == 2 + 3, verdict.message
    assert "decode steps" in verdict.message

    steps[3] = np.nan
    nan = _capture(tmp_path / "n", tokens, tokens, ref, steps)
    verdict = judge_decode((cosine,), measure_decode(nan, measure(nan)))[cosine.id]
    assert not verdict.passed and "NaN" in verdict.message


def test_a_decode_step_without_a_reference_row_at_its_position_is_an_error(tmp_path):
    """searchsorted finds the row next to a missing position: that would compare two different positions."""
    from pytest_npuprec.capture.records import CaptureError

    rng = np.random.default_rng(3)
    ref = rng.normal(size=(6, VOCAB))
    tokens = (1, 2, 3, 4, 5, 6)
    cap = _capture(tmp_path / "g", tokens, tokens, ref, ref.copy())
    prefill = measure(cap)
    cap.prompts[0].positions = (2, 3, 5, 6, 7, 8)  # the reference did not score position 4
    with pytest.raises(CaptureError, match=r"prompt p1: decode step at position 4 has no reference row"):
        measure_decode(cap, prefill)
    cap.prompts[0].positions = (2, 3, 4, 5, 6, 6)  # ... nor position 7 (the rows past the end are not there)
    with pytest.raises(CaptureError, match=r"prompt p1: decode step at position 7 has no reference row"):
        measure_decode(cap, prefill)


def test_batch_invariance_compares_rows_from_the_same_tokens(tmp_path):
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(4, VOCAB))
    tokens = (1, 2, 3, 4)
    same = {ALONE: (tokens, rows.copy()), REVERSED: (tokens, rows.copy())}
    cap = _capture(tmp_path / "a", tokens, tokens, rows, rows, same)
    v = judge_batch_invariance(BatchInvarianceCheck(), measure_batch_invariance(cap))
    assert v.passed and v.value == 0 and v.n_values == 8, v.message

    off = rows.copy()
    off[1, 3] += 0.125
    diverged = rows.copy()
    diverged[3] += 100  # after the tokens diverge: not compared
    cap = _capture(tmp_path / "b", tokens, tokens, rows, rows,
                   {ALONE: (tokens, off), REVERSED: ((1, 2, 9, 9), diverged)})
    v = judge_batch_invariance(BatchInvarianceCheck(), measure_batch_invariance(cap))
    assert not v.passed and "alone vs batch: logits max |diff| 0.125 misses max |diff| <= 0 at prompt p1 position 3" in v.message, v.message
    assert "reversed batch: max |diff| 0 over 3 rows" in v.message
    assert judge_batch_invariance(BatchInvarianceCheck(max_abs_diff=0.2), measure_batch_invariance(cap)).passed

    off[2, 0] = np.inf
    cap = _capture(tmp_path / "c", tokens, tokens, rows, rows, {ALONE: (tokens, off), REVERSED: (tokens, rows)})
    v = judge_batch_invariance(BatchInvarianceCheck(max_abs_diff=1e9), measure_batch_invariance(cap))
    assert not v.passed and "NaN/Inf never agree" in v.message


BASE = """
model_name: "org/M"
serve: {max_model_len: 256}
precision:
  max_tokens: 4
  prompts: ["plain"]
"""


def load(tmp_path, text):
    path = tmp_path / "M.yaml"
    path.write_text(BASE + text)
    return load_config(path)


def test_decode_bounds_default_to_prefill_and_phase_decode_replaces_them(tmp_path):
    c = load(tmp_path, """  thresholds:
    token_agreement: {min: 0.99}
    cosine_similarity: [{min: 0.999}, {min: 0.99, reduce: min}]
    kl_divergence: [{max: 0.01}, {max: 0.05, phase: decode}]
""")
    decode = {t.id: (t.metric, t.value, t.reduce) for t in c.decode_thresholds}
    assert decode == {"cosine_similarity-mean-decode": ("cosine_similarity", 0.999, "mean"),
                      "cosine_similarity-min-decode": ("cosine_similarity", 0.99, "min"),
                      "kl_divergence-decode": ("kl_divergence", 0.05, "mean")}
    assert [t.id for t in c.thresholds] == ["token_agreement", "cosine_similarity-mean", "cosine_similarity-min",
                                           "kl_divergence"]
    off = load(tmp_path, "  decode: false\n  thresholds: {cosine_similarity: {min: 0.9}}\n")
    assert off.decode_thresholds == () and "cosine_similarity-decode" not in off.check_ids


@pytest.mark.parametrize("text, key, expected", [
    ("  thresholds: {token_agreement: {min: 0.9, phase: decode}}", "precision.thresholds.token_agreement.phase",
     "once per prompt"),
    ("  thresholds: {cosine_similarity: {min: 0.9, phase: prefil}}", "precision.thresholds.cosine_similarity.phase",
     "expected one of prefill, decode"),
    ("  decode: false\n  thresholds: {cosine_similarity: {min: 0.9, phase: decode}}", "precision.decode",
     "phase: decode bounds"),
    ("  lengths: [1, 0]\n  thresholds: {cosine_similarity: {min: 0.9}}", "precision.lengths[1]", "at least 1 token"),
    ("  lengths: [8, 8]\n  thresholds: {cosine_similarity: {min: 0.9}}", "precision.lengths[1]", "listed twice"),
    ("  lengths: [8, 253]\n  thresholds: {cosine_similarity: {min: 0.9}}", "precision.lengths[1]",
     "253 prompt tokens + max_tokens 4 = 257 exceeds serve.max_model_len 256"),
    ("  lengths: []\n  thresholds: {cosine_similarity: {min: 0.9}}", "precision.lengths", "empty"),
    ("  lengths: [\"8\"]\n  thresholds: {cosine_similarity: {min: 0.9}}", "precision.lengths[0]", "an integer"),
])
def test_phase_and_lengths_mistakes_name_file_and_key(tmp_path, text, key, expected):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert f"M.yaml: {key}: " in str(info.value) and expected in str(info.value), str(info.value)


def test_length_prompts_have_exactly_n_tokens_and_ids(tmp_path):
    from pytest_npuprec.capture.prompts import render_prompts

    class Words:  # one token per word, a BOS first
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [0] * add_special_tokens + [hash(w) % 1000 + 1 for w in text.split()]}

    c = load(tmp_path, "  lengths: [1, 127, 128, 129]\n  thresholds: {cosine_similarity: {min: 0.9}}\n")
    prompts = render_prompts(c, Words())
    assert [(p.id, len(p.token_ids), p.index) for p in prompts[1:]] == [
        ("len-1", 1, 1), ("len-127", 127, 2), ("len-128", 128, 3), ("len-129", 129, 4)]
    assert prompts[4].token_ids[:128] == prompts[3].token_ids  # cut from one text


def test_graph_mode_compares_the_flipped_engine_within_its_bound(tmp_path):
    from pytest_npuprec.config.schema import GraphModeCheck
    from pytest_npuprec.measure.steps import GRAPH_MODE, measure_graph_mode
    from pytest_npuprec.verdicts.steps import judge_graph_mode

    rows = np.random.default_rng(3).normal(size=(4, VOCAB))
    tokens = (1, 2, 3, 4)
    graph = rows + 0.125
    cap = _capture(tmp_path / "g", tokens, tokens, rows, rows, {GRAPH_MODE: (tokens, graph)})
    assert judge_graph_mode(GraphModeCheck(max_abs_diff=0.25), measure_graph_mode(cap)).passed
    v = judge_graph_mode(GraphModeCheck(max_abs_diff=0.1), measure_graph_mode(cap))
    assert not v.passed and re.search(r"enforce_eager flipped vs as configured: logits max \|diff\| 0.125 misses "
                                      r"max \|diff\| <= 0.1 at prompt p1 position \d", v.message), v.message


def test_a_chunked_prefill_row_is_not_a_step(tmp_path):
    model = FakeModel()
    runner = fake_runner(["0-x"], [0], [100], [150])  # the first 100 of 150 prompt tokens
    capture = StepCapture(model, runner)
    capture.arm()
    model.compute_logits(torch.randn(1, VOCAB))  # position 99: sampled by vLLM and thrown away
    runner.input_batch.num_computed_tokens_cpu = np.array([100])
    runner.query_start_loc.np = np.array([0, 50], dtype=np.int32)
    last = torch.randn(1, VOCAB)
    model.compute_logits(last)  # position 149: predicts the first generated token
    result = capture.collect({"0": str(tmp_path / "a.npy")}, write=True)
    assert result == {"requests": {"0": {"first": 149, "rows": 1}}}
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), last.numpy())


def test_the_rows_of_a_scoring_batch_are_told_apart_by_each_request_s_sampling_params():
    from types import SimpleNamespace

    from pytest_npuprec.runners.scoring import SCORE_KEY
    from pytest_npuprec.runners.vllm_worker import _CaptureState, _request_segments

    params = lambda key: SimpleNamespace(sampling_params=SimpleNamespace(extra_args={SCORE_KEY: key}))
    runner = SimpleNamespace(input_batch=SimpleNamespace(req_ids=["7-ab", "5-cd", "6-ef"]),
                             query_start_loc=SimpleNamespace(np=np.array([0, 4, 9, 12, 12])),
                             requests={"7-ab": params(2), "5-cd": params(0), "6-ef": params(1)})
    state = _CaptureState()
    state.wanted = {0: {1}, 1: {2}, 2: {3}}
    assert _request_segments(runner, state, 12) == [(2, 0, 4), (0, 4, 9), (1, 9, 12)]
    state.wanted = {0: {1}}  # one request alone owns every row, whatever the runner holds
    assert _request_segments(SimpleNamespace(), state, 12) == [(0, 0, 12)]
    state.wanted = {0: {1}, 1: {2}}
    with pytest.raises(RuntimeError, match="no input_batch / query_start_loc"):
        _request_segments(SimpleNamespace(), state, 12)
    with pytest.raises(RuntimeError, match="no `requests`"):
        _request_segments(SimpleNamespace(input_batch=runner.input_batch, query_start_loc=runner.query_start_loc),
                          state, 12)
