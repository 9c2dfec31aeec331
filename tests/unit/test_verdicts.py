"""compare + verdicts on synthetic captures: right devices pass, wrong ones fail with a useful message."""
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.config.schema import ModelConfig, PrecisionConfig, ServeConfig, Threshold
from pytest_npuprec.measure import Measured
from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.verdicts import FINITE_CHECK, judge_checks, judge_threshold, judge_thresholds

COSINE = Threshold("cosine_similarity", "min", 0.999, "mean", "cosine_similarity")
COSINE_MIN = Threshold("cosine_similarity", "min", 0.999, "min", "cosine_similarity-min")
KL = Threshold("kl_divergence", "max", 0.01, "mean", "kl_divergence")
REL_L2 = Threshold("relative_l2", "max", 0.02, "max", "relative_l2")
TOKENS = Threshold("token_agreement", "min", 0.99, "mean", "token_agreement")
PREFIX = Threshold("prefix_agreement", "min", 0.99, "mean", "prefix_agreement")
ALL = (COSINE, COSINE_MIN, KL, REL_L2, TOKENS, PREFIX)


def toy_config(thresholds: tuple[Threshold, ...]) -> ModelConfig:
    return ModelConfig(name="toy", path=Path("toy.yaml"), model_name="org/toy", serve=ServeConfig(),
                       precision=PrecisionConfig(prompts=(), max_tokens=4, thresholds=thresholds))  # no decode bounds


def bf16_round(x: np.ndarray) -> np.ndarray:
    """What BF16 logits look like: float32 with the low 16 mantissa bits rounded away."""
    as_int = x.astype(np.float32).view(np.uint32)
    rounded = ((as_int + 0x7FFF + ((as_int >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32)


def test_bf16_rounded_device_passes_everything(make_capture, confident_logits):
    m = measure(make_capture(confident_logits, [bf16_round(r) for r in confident_logits]))
    verdicts = judge_thresholds(ALL, m)
    assert all(v.passed for v in verdicts.values()), [v.message for v in verdicts.values() if not v.passed]
    assert verdicts[COSINE.id].value > 0.9999
    assert len(m.cells["cosine_similarity"].values) == 12 and len(m.cells["token_agreement"].values) == 3


def test_noisy_device_fails_logit_checks_naming_model_metric_value_threshold_and_worst_prompt(
        make_capture, confident_logits):
    rng = np.random.default_rng(1)
    device = [r + rng.normal(0, 0.05, r.shape) for r in confident_logits]
    device[1][2] += rng.normal(0, 3.0, 50)  # one bad position: prompt 2, row 2
    m = measure(make_capture(confident_logits, device))
    verdicts = judge_checks(toy_config(ALL), Measured(m))  # the caller that names the model, once
    assert list(verdicts) == [FINITE_CHECK, *(t.id for t in ALL)]
    assert all(x.model == "toy" and x.message.startswith("toy: ") and x.message.count("toy") == 1
               for x in verdicts.values()), [x.message for x in verdicts.values()]
    v = verdicts[COSINE_MIN.id]
    assert v == judge_threshold(COSINE_MIN, m).of_model("toy")
    assert not v.passed
    assert v.worst["prompt_id"] == "p2" and v.worst["position"] == 2 + 2
    for part in ("toy", "cosine_similarity", "min", f"{v.value:.6g}", ">= 0.999", "FAILED", "p2",
                 "'prompt number 2'", "position 4", "of 12 values"):
        assert part in v.message, (part, v.message)
    assert judge_threshold(KL, m).passed  # the softmax is dominated by the confident top-1: the mean KL stays small
    assert not judge_threshold(Threshold("kl_divergence", "max", 0.01, "max", "kl_divergence"), m).passed
    assert not judge_threshold(REL_L2, m).passed


def test_mean_and_min_reductions_differ(make_capture, confident_logits):
    device = [r.copy() for r in confident_logits]
    device[0][0] = -device[0][0]  # one terrible row among twelve
    m = measure(make_capture(confident_logits, device))
    values = m.cells["cosine_similarity"].values
    assert judge_threshold(COSINE_MIN, m).value == pytest.approx(values.min())
    assert judge_threshold(COSINE, m).value == pytest.approx(values.mean())
    assert judge_threshold(COSINE_MIN, m).value == pytest.approx(-1.0)


def test_token_flip_is_a_mismatch_unless_the_reference_is_a_bf16_tie(make_capture, confident_logits):
    ref = [r.copy() for r in confident_logits]
    top = int(ref[0][0].argmax())
    other = (top + 1) % 50
    dev_tokens = [tuple(int(t) for t in r.argmax(axis=1)) for r in ref]
    dev_tokens[0] = (other,) + dev_tokens[0][1:]
    m = measure(make_capture(ref, ref, dev_tokens=dev_tokens))
    assert m.prompts[0].first_status == "mismatch"
    v = judge_threshold(TOKENS, m)
    assert not v.passed and v.value == pytest.approx(2 / 3) and "p1" in v.message
    assert not judge_threshold(PREFIX, m).passed

    ref[0][0, other] = ref[0][0, top] - 2 ** -12  # top-2 within one BF16 ulp: a tie
    m = measure(make_capture(ref, ref, dev_tokens=dev_tokens))
    assert m.prompts[0].first_status == "tie"
    assert judge_threshold(TOKENS, m).passed and judge_threshold(PREFIX, m).passed


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_logits_fail_every_check_and_name_prompt_and_position(make_capture, confident_logits, bad):
    device = [r.copy() for r in confident_logits]
    device[2][1, 7] = bad
    m = measure(make_capture(confident_logits, device))
    verdicts = judge_thresholds((COSINE, KL, REL_L2), m)
    assert not verdicts[FINITE_CHECK].passed
    assert "device prompt p3" in verdicts[FINITE_CHECK].message and "position 3" in verdicts[FINITE_CHECK].message
    for check in (COSINE.id, KL.id, REL_L2.id):
        v = verdicts[check]
        assert not v.passed, check
        assert "NaN" in v.message and "p3" in v.message and "position 3" in v.message


def test_nonfinite_reference_fails_too(make_capture, confident_logits):
    ref = [r.copy() for r in confident_logits]
    ref[0][0, 0] = np.nan
    m = measure(make_capture(ref, confident_logits, ref_tokens=[(1, 2, 3, 4)] * 3))
    verdicts = judge_thresholds(ALL, m)
    assert not verdicts[FINITE_CHECK].passed and "reference prompt p1" in verdicts[FINITE_CHECK].message
    assert not verdicts[TOKENS.id].passed


def test_shape_mismatch_between_sides_is_an_error(make_capture, confident_logits):
    device = [r[:, :40] for r in confident_logits]
    with pytest.raises(ValueError, match="device logits .* vs reference"):
        measure(make_capture(confident_logits, device))


def test_threshold_is_the_one_place_a_bound_becomes_an_operator():
    assert (COSINE.op, KL.op) == (">=", "<=")
    assert COSINE.condition() == "mean cosine_similarity >= 0.999"
    assert KL.condition("KL") == "KL <= 0.01"
    assert COSINE.holds(0.999) and not COSINE.holds(0.998) and KL.holds(0.01) and not KL.holds(0.02)
    assert list(KL.holds(np.array([0.0, 0.5, np.nan]))) == [True, False, False]  # NaN never meets a bound


def test_one_helper_writes_every_sentence_and_verdicts_take_keywords_only():
    from pytest_npuprec.verdicts import Verdict, verdict

    ok = verdict(check_id="c", what="thing compared", passed=True, value=1.0, value_of="share")
    bad = verdict(check_id="c", what="thing compared", passed=False, details=["2 of 3 miss", "worst at p2"],
                  value=1 / 3, value_of="share", threshold=COSINE)
    assert ok.message == "thing compared: passed" and bad.message == "thing compared: FAILED: 2 of 3 miss; worst at p2"
    assert bad.bound_text == "mean >= 0.999" and bad.as_dict()["value_of"] == "share"
    assert bad.of_model("toy").message == "toy: thing compared: FAILED: 2 of 3 miss; worst at p2"
    with pytest.raises(TypeError):
        Verdict("c", True, "message", 1.0, "share")  # positional arguments are refused
