"""Check kinds judged on synthetic captures: each passes when the device is right and fails, with a
message that says what and where, when it is wrong. NaN never passes."""
import math

import numpy as np
import pytest

from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput
from pytest_npuprec.capture.prompts import PromptText
from pytest_npuprec.measure.kinds import (TensorTernary, measure_determinism, measure_labels, measure_perplexity,
                                         measure_thinking)
from pytest_npuprec.config.schema import DeterminismCheck, LabelCheck, PerplexityCheck, TernaryWeightsCheck, ThinkingCheck
from pytest_npuprec.metrics.ternary import check_ternary
from pytest_npuprec.verdicts.kinds import (judge_determinism, judge_labels, judge_perplexity, judge_ternary_weights,
                                           judge_thinking)


def capture_with_runs(folder, runs: list[tuple[list[np.ndarray], list[tuple[int, ...]]]]) -> ModelCapture:
    """runs[k] = (logits per prompt, greedy tokens per prompt) of device run k + 1; run 1 is also the reference."""
    writer = CaptureWriter(folder)
    first_logits, first_tokens = runs[0]
    records = []
    for i, (logits, tokens) in enumerate(zip(first_logits, first_tokens)):
        prompt = PromptInput(i, f"p{i + 1}", f"prompt {i + 1}", (1, 2))
        generated = {"reference": tokens}
        np.save(writer.logits_path("reference", i), logits)
        for k, (run_logits, run_tokens) in enumerate(runs, start=1):
            side = "device" if k == 1 else f"device-run{k}"
            np.save(writer.logits_path(side, i), run_logits[i])
            generated[side] = run_tokens[i]
        records.append(PromptCapture(prompt, prompt.token_ids + tokens, tuple(range(1, 1 + len(tokens))),
                                     generated, {}))
    return writer.finish(ModelCapture("toy", records, {"device_runs": len(runs)}))


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 20)).astype(np.float32) for _ in range(2)]


TOKENS = [(4, 5, 6), (7, 8, 9)]
CHECK = DeterminismCheck(runs=3)


def test_identical_runs_pass(tmp_path, logits):
    cap = capture_with_runs(tmp_path / "c", [(logits, TOKENS)] * 3)
    v = judge_determinism(CHECK, measure_determinism(cap))
    assert v.passed and v.value == 0 and "3 device runs" in v.message


def test_different_tokens_fail(tmp_path, logits):
    cap = capture_with_runs(tmp_path / "c", [(logits, TOKENS), (logits, TOKENS), (logits, [(4, 5, 6), (7, 1, 9)])])
    v = judge_determinism(CHECK, measure_determinism(cap))
    assert not v.passed
    assert "run 3 generated different tokens than run 1 on 1 prompt(s), first prompt p2 at token 1 (8 vs 1)" in v.message


def test_different_logits_fail_with_where(tmp_path, logits):
    moved = [x.copy() for x in logits]
    moved[1][2, 7] += 1e-3
    cap = capture_with_runs(tmp_path / "c", [(logits, TOKENS), (moved, TOKENS), (logits, TOKENS)])
    v = judge_determinism(CHECK, measure_determinism(cap))
    assert not v.passed and "run 2 vs run 1: logits max |diff|" in v.message and "prompt p2 position 3" in v.message
    tolerant = judge_determinism(DeterminismCheck(runs=3, max_abs_diff=1e-2), measure_determinism(cap))
    assert tolerant.passed


def test_nan_logits_never_count_as_identical(tmp_path, logits):
    nan = [x.copy() for x in logits]
    nan[0][0, 0] = np.nan
    cap = capture_with_runs(tmp_path / "c", [(nan, TOKENS), (nan, TOKENS), (nan, TOKENS)])
    v = judge_determinism(CHECK, measure_determinism(cap))
    assert not v.passed and math.isnan(v.value) and "not finite" in v.message


def perplexity_capture(folder, ref: np.ndarray, dev: np.ndarray, tokens) -> ModelCapture:
    writer = CaptureWriter(folder)
    prompt = PromptInput(0, "perplexity", "fixed text", tuple(tokens), kind="perplexity")
    np.save(writer.logits_path("reference", 0), ref)
    np.save(writer.logits_path("device", 0), dev)
    record = PromptCapture(prompt, tuple(tokens), tuple(range(len(tokens) - 1)), {}, {})
    return writer.finish(ModelCapture("toy", [record], {}))


def test_perplexity_ratio(tmp_path):
    rng = np.random.default_rng(1)
    tokens = [int(t) for t in rng.integers(0, 30, 12)]
    ref = rng.normal(0, 2, size=(11, 30)).astype(np.float32)
    check = PerplexityCheck("fixed text", max_ratio=1.02)
    same = measure_perplexity(perplexity_capture(tmp_path / "a", ref, ref + 0.5, tokens))  # shift: same softmax
    assert judge_perplexity(check, same).passed and same.ratio == pytest.approx(1.0)
    assert same.tokens == 11

    flat = measure_perplexity(perplexity_capture(tmp_path / "b", ref, ref * 0.7, tokens))
    v = judge_perplexity(check, flat)
    assert not v.passed and f"ratio {flat.ratio:.6g}" in v.message and "over 11 tokens" in v.message

    bad = ref.copy()
    bad[3, 3] = np.inf
    v = judge_perplexity(check, measure_perplexity(perplexity_capture(tmp_path / "c", ref, bad, tokens)))
    assert not v.passed and math.isnan(v.value) and "not finite" in v.message


def texts(outputs: dict[str, tuple[str, str]], prompt: str = "", chat: bool = True) -> list[PromptText]:
    return [PromptText(i, pid, pid, chat, prompt, {"reference": r, "device": d})
            for i, (pid, (r, d)) in enumerate(outputs.items())]


GUARD = r"Safety: (Safe|Unsafe)\nCategories: ([^\n<]+)"
LABELS = LabelCheck(GUARD)


def test_labels_agree():
    t = texts({"bomb": ("Safety: Unsafe\nCategories: Violent", "Safety: Unsafe\nCategories: Violent<|im_end|>"),
               "france": ("Safety: Safe\nCategories: None", "Safety: Safe\nCategories: None")})
    v = judge_labels(LABELS, measure_labels(t, LABELS))
    assert v.passed and v.value == 1 and "2/2" in v.message


def test_a_different_device_label_fails():
    t = texts({"bomb": ("Safety: Unsafe\nCategories: Violent", "Safety: Safe\nCategories: None"),
               "france": ("Safety: Safe\nCategories: None", "Safety: Safe\nCategories: None")})
    v = judge_labels(LABELS, measure_labels(t, LABELS))
    assert not v.passed and v.value == 0.5
    assert "prompt bomb: device 'Safe/None' vs reference 'Unsafe/Violent'" in v.message


def test_a_missing_device_label_fails():
    t = texts({"bomb": ("Safety: Unsafe\nCategories: Violent", "Safety: ???")})
    v = judge_labels(LABELS, measure_labels(t, LABELS))
    assert not v.passed and "device None vs reference 'Unsafe/Violent'" in v.message


def test_an_unlabeled_reference_fails_rather_than_passing_vacuously():
    t = texts({"bomb": ("I cannot help", "I cannot help")})
    v = judge_labels(LABELS, measure_labels(t, LABELS))
    assert not v.passed and "reference output(s) have no label" in v.message


def test_labels_only_on_selected_prompts():
    t = texts({"bomb": ("Safety: Unsafe\nCategories: Violent",) * 2, "prose": ("Paris", "Berlin")})
    selected = LabelCheck(GUARD, ("bomb",))
    assert judge_labels(selected, measure_labels(t, selected)).passed


THINK = ThinkingCheck()


def test_thinking_closed_on_both_sides_passes():
    t = texts({"math": ("\nadd\n</think>\n\nFour.", "\nadd\n</think>\n\nFour.")}, prompt="assistant\n<think>\n")
    v = judge_thinking(THINK, measure_thinking(t, THINK, True))
    assert v.passed and "1/1" in v.message


def test_device_that_never_closes_thinking_fails():
    t = texts({"math": ("<think>\nadd\n</think>\n\nFour.", "<think>\nadd add add add")})
    v = judge_thinking(THINK, measure_thinking(t, THINK, None))
    assert not v.passed and "device unclosed vs reference closed" in v.message


def test_different_answer_after_thinking_fails_unless_truncated():
    t = texts({"math": ("<think>a</think>Four.", "<think>a</think>Five.")})
    v = judge_thinking(THINK, measure_thinking(t, THINK, True))
    assert not v.passed and "answer(s) after the thinking section differ" in v.message
    cut = texts({"math": ("<think>a</think>Four is the", "<think>a</think>Four")})
    assert judge_thinking(THINK, measure_thinking(cut, THINK, True)).passed


def test_an_empty_answer_after_thinking_matches_nothing():
    """An answer cut to nothing compared nothing: it is a difference, naming the prompt and the empty side."""
    for reference, device, empty in (("<think>a</think>Paris.", "<think>a</think>", "device"),
                                     ("<think>a</think>", "<think>a</think>Paris.", "reference"),
                                     ("<think>a</think>", "<think>a</think>", "device and reference")):
        v = judge_thinking(THINK, measure_thinking(texts({"capital": (reference, device)}), THINK, True))
        assert not v.passed and "first prompt capital" in v.message, v.message
        assert f"{empty} answer empty after </think>" in v.message, v.message


def test_thinking_disabled_expects_no_section():
    t = texts({"q": ("Four.", "Four.")}, prompt="assistant\n<think>\n\n</think>\n\n")
    assert judge_thinking(THINK, measure_thinking(t, THINK, False)).passed
    wrong = texts({"q": ("<think>hm</think>Four.", "<think>hm</think>Four.")})
    v = judge_thinking(THINK, measure_thinking(wrong, THINK, False))
    assert not v.passed and "reference output(s) do not show no thinking section" in v.message


def test_thinking_only_on_chat_prompts_by_default():
    t = texts({"plain": ("x", "y")}, chat=False) + texts({"chat": ("<think>a</think>b", "<think>a</think>b")})
    pairs = measure_thinking(t, THINK, None).pairs
    assert [p.prompt_id for p in pairs] == ["chat"]


def tensor(name, weight, group_size=-1):
    return TensorTernary(name, weight.shape, check_ternary(weight, group_size))


def test_ternary_verdicts():
    check = TernaryWeightsCheck()
    good = np.array([[0.5, -0.5], [0.0, 0.5]], dtype=np.float32)
    assert judge_ternary_weights(check, [tensor("a.q_proj.weight", good)]).passed
    dense = np.array([[0.5, -0.25], [0.125, 0.75]], dtype=np.float32)
    v = judge_ternary_weights(check, [tensor("a.q_proj.weight", good), tensor("a.up_proj.weight", dense)])
    assert not v.passed and v.value == 1
    assert "1 of 2 tensors are not ternary; worst a.up_proj.weight [2, 2]: group 0 holds 4 distinct values" in v.message


def test_ternary_with_nothing_to_check_fails():
    v = judge_ternary_weights(TernaryWeightsCheck(), [])
    assert not v.passed and "no tensor in the checkpoint matches include" in v.message


def test_ternary_grouping_error_fails():
    v = judge_ternary_weights(TernaryWeightsCheck(group_size=48),
                      [TensorTernary("a.q_proj.weight", (4, 64), None, "input dimension 64 is not a multiple")])
    assert not v.passed and "cannot be grouped, first a.q_proj.weight [4, 64]" in v.message
