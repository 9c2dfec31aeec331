"""compare + verdicts on synthetic captures: right devices pass, wrong ones fail with a useful message."""
import numpy as np
import pytest

from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.config.schema import Threshold
from pytest_npuprec.verdicts import FINITE_CHECK, judge, judge_all

COSINE = Threshold("cosine_similarity", "min", 0.999, "mean", "cosine_similarity")
COSINE_MIN = Threshold("cosine_similarity", "min", 0.999, "min", "cosine_similarity-min")
KL = Threshold("kl_divergence", "max", 0.01, "mean", "kl_divergence")
REL_L2 = Threshold("relative_l2", "max", 0.02, "max", "relative_l2")
TOKENS = Threshold("token_agreement", "min", 0.99, "mean", "token_agreement")
PREFIX = Threshold("prefix_agreement", "min", 0.99, "mean", "prefix_agreement")
ALL = (COSINE, COSINE_MIN, KL, REL_L2, TOKENS, PREFIX)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """What BF16 logits look like: float32 with the low 16 mantissa bits rounded away."""
    as_int = x.astype(np.float32).view(np.uint32)
    rounded = ((as_int + 0x7FFF + ((as_int >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32)


def test_bf16_rounded_device_passes_everything(make_capture, confident_logits):
    m = measure(make_capture(confident_logits, [bf16_round(r) for r in confident_logits]))
    verdicts = judge_all(m, ALL)
    assert all(v.passed for v in verdicts.values()), [v.message for v in verdicts.values() if not v.passed]
    assert verdicts[COSINE.id].value > 0.9999
    assert len(m.cells["cosine_similarity"].values) == 12 and len(m.cells["token_agreement"].values) == 3


def test_noisy_device_fails_logit_checks_naming_model_metric_value_threshold_and_worst_prompt(
        make_capture, confident_logits):
    rng = np.random.default_rng(1)
    device = [r + rng.normal(0, 0.05, r.shape) for r in confident_logits]
    device[1][2] += rng.normal(0, 3.0, 50)  # one bad position: prompt 2, row 2
    m = measure(make_capture(confident_logits, device))
    v = judge(m, COSINE_MIN)
    assert not v.passed
    assert v.worst["prompt_id"] == "p2" and v.worst["position"] == 2 + 2
    for part in ("toy", "cosine_similarity", "min", f"{v.value:.6g}", ">= 0.999", "FAILED", "p2",
                 "'prompt number 2'", "position 4", "of 12 values"):
        assert part in v.message, (part, v.message)
    assert judge(m, KL).passed  # the softmax is dominated by the confident top-1: the mean KL stays small
    assert not judge(m, Threshold("kl_divergence", "max", 0.01, "max", "kl_divergence")).passed
    assert not judge(m, REL_L2).passed


def test_mean_and_min_reductions_differ(make_capture, confident_logits):
    device = [r.copy() for r in confident_logits]
    device[0][0] = -device[0][0]  # one terrible row among twelve
    m = measure(make_capture(confident_logits, device))
    values = m.cells["cosine_similarity"].values
    assert judge(m, COSINE_MIN).value == pytest.approx(values.min())
    assert judge(m, COSINE).value == pytest.approx(values.mean())
    assert judge(m, COSINE_MIN).value == pytest.approx(-1.0)


def test_token_flip_is_a_mismatch_unless_the_reference_is_a_bf16_tie(make_capture, confident_logits):
    ref = [r.copy() for r in confident_logits]
    top = int(ref[0][0].argmax())
    other = (top + 1) % 50
    dev_tokens = [tuple(int(t) for t in r.argmax(axis=1)) for r in ref]
    dev_tokens[0] = (other,) + dev_tokens[0][1:]
    m = measure(make_capture(ref, ref, dev_tokens=dev_tokens))
    assert m.prompts[0].first_status == "mismatch"
    v = judge(m, TOKENS)
    assert not v.passed and v.value == pytest.approx(2 / 3) and "p1" in v.message
    assert not judge(m, PREFIX).passed

    ref[0][0, other] = ref[0][0, top] - 2 ** -12  # top-2 within one BF16 ulp: a tie
    m = measure(make_capture(ref, ref, dev_tokens=dev_tokens))
    assert m.prompts[0].first_status == "tie"
    assert judge(m, TOKENS).passed and judge(m, PREFIX).passed


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_logits_fail_every_check_and_name_prompt_and_position(make_capture, confident_logits, bad):
    device = [r.copy() for r in confident_logits]
    device[2][1, 7] = bad
    m = measure(make_capture(confident_logits, device))
    verdicts = judge_all(m, (COSINE, KL, REL_L2))
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
    verdicts = judge_all(m, ALL)
    assert not verdicts[FINITE_CHECK].passed and "reference prompt p1" in verdicts[FINITE_CHECK].message
    assert not verdicts[TOKENS.id].passed


def test_shape_mismatch_between_sides_is_an_error(make_capture, confident_logits):
    device = [r[:, :40] for r in confident_logits]
    with pytest.raises(ValueError, match="device logits .* vs reference"):
        measure(make_capture(confident_logits, device))
