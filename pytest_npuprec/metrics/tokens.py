"""Greedy-token agreement between device and reference, aware of BF16 ties.

A device computing logits in BF16 knows each logit only to about one BF16 ulp,
so when the reference's top two candidates are closer than that, the device
picking the runner-up is a legitimate tie, not a precision failure.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Final, Literal, get_args

import numpy as np

# match: the same token; tie: a different one the reference scores within the margin (one BF16 ulp);
# mismatch: any other; nonfinite: the reference logits the verdict relies on hold NaN/Inf.
TokenStatus = Literal["match", "tie", "mismatch", "nonfinite"]
MATCH: Final = "match"
TIE: Final = "tie"
MISMATCH: Final = "mismatch"
NONFINITE: Final = "nonfinite"
STATUSES: tuple[TokenStatus, ...] = get_args(TokenStatus)

BF16_MANTISSA_BITS = 7  # explicit bits; 8 significant bits with the implicit one
# Spacing of BF16 subnormals and of its lowest normal binade (2**-126 * 2**-7):
# no two BF16 values are closer, so the ulp never drops below it (and 0 gets it).
BF16_MIN_ULP = 2.0**-133


def bf16_ulp(x):
    """BF16 ulp at x: 2**(floor(log2|x|) - 7), at least 2**-133; NaN for non-finite x.

    Returns a float for scalar input and a float64 array for array input.
    """
    values = np.asarray(x, dtype=np.float64)
    # frexp gives |x| = m * 2**e with m in [0.5, 1), so floor(log2|x|) = e - 1, exactly
    # (for x == 0 it gives e == 0, hence the explicit case).
    _, exponent = np.frexp(values)
    ulp = np.maximum(np.ldexp(1.0, exponent - 1 - BF16_MANTISSA_BITS), BF16_MIN_ULP)
    ulp = np.where(values == 0, BF16_MIN_ULP, ulp)
    ulp = np.where(np.isfinite(values), ulp, np.nan)
    return float(ulp) if ulp.ndim == 0 else ulp


def _token_id(token, vocab_size: int, what: str) -> int:
    try:
        token = operator.index(token)
    except TypeError:
        raise ValueError(f"{what} token id must be an integer, got {token!r}") from None
    if not 0 <= token < vocab_size:
        raise ValueError(f"{what} token id {token} is outside the vocabulary of size {vocab_size}")
    return token


def _check_margin(margin) -> None:
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")


def _token_sequence(tokens, what: str) -> np.ndarray:
    array = np.asarray(tokens)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} tokens must be a 1-D sequence of integer ids, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


def classify_token(device_token: int, reference_token: int, reference_logits,
                   margin: float | None = None) -> TokenStatus:
    """Compare one device token with the reference's: "match", "tie", "mismatch" or "nonfinite".

    "tie": the reference scores its own token at most `margin` above the device's
    (default: one BF16 ulp of the larger of the two logits' magnitudes).
    "nonfinite": the reference row holds NaN/Inf, whatever the tokens.
    """
    row = np.asarray(reference_logits)
    if row.ndim != 1 or row.shape[0] == 0:
        raise ValueError(f"reference_logits must be a non-empty 1-D row [vocab], got shape {row.shape}")
    vocab_size = row.shape[0]
    device_token = _token_id(device_token, vocab_size, "device")
    reference_token = _token_id(reference_token, vocab_size, "reference")
    _check_margin(margin)
    row = row.astype(np.float64)
    if not np.isfinite(row).all():
        return NONFINITE
    if device_token == reference_token:
        return MATCH
    ref_logit, dev_logit = row[reference_token], row[device_token]
    if margin is None:
        margin = bf16_ulp(max(abs(ref_logit), abs(dev_logit)))
    # A negative gap (the reference itself prefers the device's token) is a tie too.
    return TIE if ref_logit - dev_logit <= margin else MISMATCH


def agreed_prefix_length(device_tokens, reference_tokens) -> int:
    """Number of leading tokens on which the two sequences agree."""
    device = _token_sequence(device_tokens, "device")
    reference = _token_sequence(reference_tokens, "reference")
    n = min(len(device), len(reference))
    differs = np.flatnonzero(device[:n] != reference[:n])
    return int(differs[0]) if differs.size else n


@dataclass(frozen=True)
class ContinuationAgreement:
    prefix_length: int  # tokens agreed before the first difference
    status: TokenStatus
    diverged_at: int | None  # first differing index (first non-finite row for "nonfinite"); None on "match"
    score: float  # 1.0 for match/tie, prefix share for mismatch, NaN for nonfinite


def continuation_agreement(device_tokens, reference_tokens, reference_logits, margin: float | None = None
                           ) -> ContinuationAgreement:
    """Compare greedy continuations up to their first divergence.

    reference_logits is [T x V] (extra trailing rows are ignored); row k is the
    reference's prediction of reference_tokens[k]. A divergence the reference
    logits call a BF16 tie scores 1.0; any other scores k / max(len(reference),
    len(device)). A non-finite reference row at or before the divergence gives
    status "nonfinite" and score NaN.
    """
    device = _token_sequence(device_tokens, "device")
    reference = _token_sequence(reference_tokens, "reference")
    _check_margin(margin)
    logits = np.asarray(reference_logits)
    if logits.ndim != 2 or logits.shape[0] < len(reference) or (len(reference) and logits.shape[1] == 0):
        raise ValueError(
            f"reference_logits must be [T x V] with a row per reference token; got shape {logits.shape} "
            f"for {len(reference)} reference tokens"
        )
    vocab_size = logits.shape[1]
    for token in reference:
        _token_id(token, vocab_size, "reference")

    k = agreed_prefix_length(device, reference)
    identical = k == len(device) == len(reference)
    checked = min(k + 1, len(reference))  # rows the agreed prefix and the divergence rely on
    bad_rows = np.flatnonzero(~np.isfinite(logits[:checked].astype(np.float64)).all(axis=1))
    if bad_rows.size:
        return ContinuationAgreement(k, NONFINITE, int(bad_rows[0]), math.nan)
    if identical:
        return ContinuationAgreement(k, MATCH, None, 1.0)
    # When one sequence ended at k there is no pair of tokens to call a tie.
    if k < len(device) and k < len(reference):
        if classify_token(int(device[k]), int(reference[k]), logits[k], margin) == TIE:
            return ContinuationAgreement(k, TIE, k, 1.0)
    return ContinuationAgreement(k, MISMATCH, k, k / max(len(reference), len(device), 1))


def first_token_status(device_tokens, reference_tokens, reference_logits,
                       margin: float | None = None) -> TokenStatus:
    """Status of the first generated token (row 0): "match", "tie", "mismatch" or "nonfinite"."""
    device = _token_sequence(device_tokens, "device")[:1]
    reference = _token_sequence(reference_tokens, "reference")[:1]
    logits = np.asarray(reference_logits)
    return continuation_agreement(device, reference, logits[:1] if logits.ndim == 2 else logits, margin).status
