"""Token agreement: BF16 ulp, tie-aware classification, continuation agreement."""
from __future__ import annotations

import math

import numpy as np
import pytest

# property tests need the test extra (pip install -e .[test]); a plain install skips this module
pytest.importorskip("hypothesis")
from hypothesis import given
from hypothesis import strategies as st

from pytest_npuprec.metrics.tokens import (
    ContinuationAgreement,
    agreed_prefix_length,
    bf16_ulp,
    classify_token,
    continuation_agreement,
    first_token_status,
)

VOCAB = 8


def logits_row(**entries):
    """A row of clearly-separated low logits with the given {token_index: logit}."""
    row = np.linspace(-20.0, -10.0, VOCAB).astype(np.float32)
    for key, value in entries.items():
        row[int(key.lstrip("t"))] = value
    return row


# ---------------------------------------------------------------- bf16_ulp


@pytest.mark.parametrize(
    ("x", "ulp"),
    [(1.0, 2**-7), (3.0, 2**-6), (-100, 0.5), (1.99, 2**-7), (2.0, 2**-6), (0.75, 2**-8), (-0.5, 2**-8),
     (10.0, 2**-4), (65536.0, 2**9)],
)
def test_bf16_ulp_values(x, ulp):
    assert bf16_ulp(x) == ulp
    assert isinstance(bf16_ulp(x), float)


def test_bf16_ulp_at_zero_and_below_the_normal_range():
    assert bf16_ulp(0.0) == 2**-133
    assert bf16_ulp(-0.0) == 2**-133
    assert bf16_ulp(2.0**-140) == 2**-133  # BF16 subnormals are spaced 2**-133 too
    assert bf16_ulp(2.0**-126) == 2**-133


def test_bf16_ulp_of_nonfinite_is_nan():
    assert math.isnan(bf16_ulp(math.nan))
    assert math.isnan(bf16_ulp(math.inf))


def test_bf16_ulp_elementwise_on_arrays():
    result = bf16_ulp(np.array([1.0, 3.0, -100.0, 0.0, np.inf], dtype=np.float32))
    assert isinstance(result, np.ndarray) and result.dtype == np.float64
    np.testing.assert_array_equal(result, [2**-7, 2**-6, 0.5, 2**-133, np.nan])


def _next_bf16_up(x32: np.float32) -> float:
    # BF16 is the top 16 bits of float32: the next value up adds one at bit 16.
    bits = np.array([x32], dtype=np.float32).view(np.uint32)
    return float((bits + np.uint32(0x10000)).view(np.float32)[0])


@given(st.integers(0x0080, 0x7F7E))  # positive normal, finite BF16 bit patterns below the largest
def test_bf16_ulp_is_the_gap_to_the_next_bf16_value(pattern):
    x = np.array([pattern << 16], dtype=np.uint32).view(np.float32)[0]
    assert bf16_ulp(float(x)) == _next_bf16_up(x) - float(x)
    assert bf16_ulp(-float(x)) == bf16_ulp(float(x))


# ---------------------------------------------------------------- classify_token


def test_same_token_is_a_match():
    assert classify_token(3, 3, logits_row(t3=5.0)) == "match"


def test_flip_within_one_ulp_is_a_tie():
    # ulp(10) = 2**-4; the device took token 1, which the reference scores 2**-5 lower.
    row = logits_row(t0=10.0, t1=10.0 - 2**-5)
    assert classify_token(1, 0, row) == "tie"


def test_flip_of_exactly_one_ulp_is_a_tie():
    assert classify_token(1, 0, logits_row(t0=10.0, t1=10.0 - 2**-4)) == "tie"


def test_flip_of_several_ulps_is_a_mismatch():
    assert classify_token(1, 0, logits_row(t0=10.0, t1=10.0 - 4 * 2**-4)) == "mismatch"


def test_flip_to_a_far_token_is_a_mismatch():
    assert classify_token(7, 0, logits_row(t0=10.0, t7=2.0)) == "mismatch"


def test_default_margin_uses_the_larger_magnitude():
    # Reference -1.99 (ulp 2**-7), device -2.0 (ulp 2**-6): gap 0.01 is within ulp(2.0) = 0.0156
    # but not within ulp(1.99) = 0.0078.
    row = logits_row(t0=-1.99, t1=-2.0)
    assert classify_token(1, 0, row) == "tie"
    assert classify_token(1, 0, row, margin=2**-7) == "mismatch"


def test_explicit_margin_overrides_the_ulp():
    row = logits_row(t0=10.0, t1=10.0 - 2**-5)
    assert classify_token(1, 0, row, margin=0.0) == "mismatch"
    assert classify_token(1, 0, logits_row(t0=10.0, t1=9.0), margin=1.0) == "tie"


def test_device_token_the_reference_scores_higher_is_a_tie():
    # The reference row itself prefers the device's choice (negative gap).
    assert classify_token(1, 0, logits_row(t0=5.0, t1=6.0)) == "tie"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("device_token", "reference_token"), [(0, 0), (1, 0)])
def test_nonfinite_reference_row_is_reported(bad, device_token, reference_token):
    row = logits_row(t0=10.0, t1=10.0 - 2**-5)
    row[5] = bad
    assert classify_token(device_token, reference_token, row) == "nonfinite"


@pytest.mark.parametrize("token", [VOCAB, VOCAB + 100, -1])
@pytest.mark.parametrize("side", ["device", "reference"])
def test_out_of_range_token_names_id_and_vocab(token, side):
    args = (token, 0) if side == "device" else (0, token)
    with pytest.raises(ValueError) as excinfo:
        classify_token(*args, logits_row())
    assert str(token) in str(excinfo.value) and str(VOCAB) in str(excinfo.value)


def test_numpy_integer_tokens_are_accepted():
    assert classify_token(np.int64(2), np.int32(2), logits_row()) == "match"


@pytest.mark.parametrize("margin", [-1.0, math.nan, math.inf])
def test_bad_margin_is_rejected(margin):
    with pytest.raises(ValueError, match="margin"):
        classify_token(1, 0, logits_row(), margin=margin)


def test_two_dimensional_row_is_rejected():
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        classify_token(0, 0, np.zeros((2, VOCAB)))


# ---------------------------------------------------------------- agreed_prefix_length


@pytest.mark.parametrize(
    ("device", "reference", "length"),
    [([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2, 4], 2), ([5, 2], [1, 2], 0), ([1, 2], [1, 2, 3], 2),
     ([1, 2, 3], [1, 2], 2), ([], [1], 0), ([], [], 0)],
)
def test_agreed_prefix_length(device, reference, length):
    assert agreed_prefix_length(device, reference) == length


@given(st.lists(st.integers(0, 3), max_size=12), st.lists(st.integers(0, 3), max_size=12))
def test_agreed_prefix_length_properties(device, reference):
    k = agreed_prefix_length(device, reference)
    assert device[:k] == reference[:k]
    assert k == min(len(device), len(reference)) or device[k] != reference[k]


def test_float_tokens_are_rejected():
    with pytest.raises(ValueError, match="integer"):
        agreed_prefix_length([1.5, 2.0], [1, 2])


# ---------------------------------------------------------------- continuation_agreement


def reference_logits(tokens, tie_at=None):
    """[T x V] rows where each reference token wins clearly, except a BF16 tie at row tie_at."""
    rows = np.tile(np.linspace(-20.0, -10.0, VOCAB).astype(np.float32), (len(tokens), 1))
    for k, token in enumerate(tokens):
        rows[k, token] = 10.0
    if tie_at is not None:
        runner_up = (tokens[tie_at] + 1) % VOCAB
        rows[tie_at, runner_up] = 10.0 - 2**-5
    return rows


REFERENCE = [1, 2, 3, 4, 5]


def test_identical_continuations_match():
    result = continuation_agreement(REFERENCE, REFERENCE, reference_logits(REFERENCE))
    assert result == ContinuationAgreement(prefix_length=5, status="match", diverged_at=None, score=1.0)


@pytest.mark.parametrize("k", range(5))
def test_divergence_at_k_scores_k_over_t(k):
    device = list(REFERENCE)
    device[k] = 0  # a clear loser in every row
    result = continuation_agreement(device, REFERENCE, reference_logits(REFERENCE))
    assert result == ContinuationAgreement(prefix_length=k, status="mismatch", diverged_at=k, score=k / 5)


def test_device_stopping_early_is_a_mismatch():
    result = continuation_agreement(REFERENCE[:3], REFERENCE, reference_logits(REFERENCE))
    assert result == ContinuationAgreement(prefix_length=3, status="mismatch", diverged_at=3, score=3 / 5)


def test_device_running_past_the_reference_is_a_mismatch_scored_below_one():
    # Deviation from k / len(reference), which would be 1.0 here: scored k / len(device).
    result = continuation_agreement(REFERENCE + [6, 7, 1], REFERENCE, reference_logits(REFERENCE))
    assert result == ContinuationAgreement(prefix_length=5, status="mismatch", diverged_at=5, score=5 / 8)


def test_tie_at_divergence_scores_one():
    logits = reference_logits(REFERENCE, tie_at=2)
    device = [1, 2, (3 + 1) % VOCAB, 0, 0]  # takes the near-tied runner-up, then anything
    result = continuation_agreement(device, REFERENCE, logits)
    assert result == ContinuationAgreement(prefix_length=2, status="tie", diverged_at=2, score=1.0)


def test_tie_is_judged_on_the_divergence_row_only():
    logits = reference_logits(REFERENCE, tie_at=3)  # tie at row 3, divergence at row 2
    device = [1, 2, 4, 4, 5]
    result = continuation_agreement(device, REFERENCE, logits)
    assert result.status == "mismatch" and result.score == 2 / 5


def test_explicit_margin_is_passed_through():
    logits = reference_logits(REFERENCE, tie_at=2)
    device = [1, 2, 4]
    assert continuation_agreement(device, REFERENCE, logits, margin=0.0).status == "mismatch"


def test_nonfinite_row_before_divergence_is_reported():
    logits = reference_logits(REFERENCE)
    logits[1, 0] = np.nan
    result = continuation_agreement(REFERENCE, REFERENCE, logits)
    assert result.status == "nonfinite" and result.diverged_at == 1 and math.isnan(result.score)


def test_nonfinite_row_at_divergence_is_reported():
    logits = reference_logits(REFERENCE)
    logits[2, 7] = np.inf
    result = continuation_agreement([1, 2, 0], REFERENCE, logits)
    assert result.status == "nonfinite" and result.diverged_at == 2 and math.isnan(result.score)


def test_nonfinite_row_after_divergence_is_irrelevant():
    logits = reference_logits(REFERENCE)
    logits[4, 0] = np.nan
    result = continuation_agreement([1, 0, 3, 4, 5], REFERENCE, logits)
    assert result == ContinuationAgreement(prefix_length=1, status="mismatch", diverged_at=1, score=1 / 5)


def test_empty_continuations():
    empty_logits = np.zeros((0, VOCAB), dtype=np.float32)
    assert continuation_agreement([], [], empty_logits).status == "match"
    result = continuation_agreement([3], [], empty_logits)
    assert result.status == "mismatch" and result.score == 0.0


def test_extra_logit_rows_are_ignored():
    logits = np.vstack([reference_logits(REFERENCE), np.full((1, VOCAB), np.nan, dtype=np.float32)])
    assert continuation_agreement(REFERENCE, REFERENCE, logits).status == "match"


@pytest.mark.parametrize("shape", [(4, VOCAB), (VOCAB,), (5, 0)])
def test_logits_without_a_row_per_reference_token_are_rejected(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        continuation_agreement(REFERENCE, REFERENCE, np.zeros(shape, dtype=np.float32))


def test_out_of_range_reference_token_is_rejected():
    with pytest.raises(ValueError, match=f"{VOCAB}"):
        continuation_agreement([1, VOCAB], [1, VOCAB], np.zeros((2, VOCAB)))


def test_result_is_frozen():
    result = continuation_agreement(REFERENCE, REFERENCE, reference_logits(REFERENCE))
    with pytest.raises(AttributeError):
        result.score = 0.0


# ---------------------------------------------------------------- first_token_status


def test_first_token_status_cases():
    logits = reference_logits(REFERENCE, tie_at=0)
    assert first_token_status([1, 9, 9], REFERENCE, logits) == "match"  # later tokens do not matter
    assert first_token_status([2, 2, 3], REFERENCE, logits) == "tie"
    assert first_token_status([0, 2, 3], REFERENCE, logits) == "mismatch"
    assert first_token_status([], REFERENCE, logits) == "mismatch"
    logits[0, 5] = np.nan
    assert first_token_status([1, 2, 3], REFERENCE, logits) == "nonfinite"
