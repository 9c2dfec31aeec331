"""Row-wise comparisons of device logits against reference logits.

Every function takes two 2-D arrays [positions x vocab] of pre-softmax logits
and returns a float64 array [positions]. Work is done in float64, a chunk of
rows at a time, so a 166k vocabulary never needs a full [P x V] float64 copy.
A row holding NaN or +-Inf in either input yields NaN for that row.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import log_softmax

CHUNK_ROWS = 32  # KL holds ~6 float64 chunks at once: ~250 MB at a 166k vocab

RowMetric = Callable[..., np.ndarray]


def _as_2d_pair(device, reference) -> tuple[np.ndarray, np.ndarray]:
    device = np.asarray(device)
    reference = np.asarray(reference)
    if device.ndim != 2 or reference.ndim != 2 or device.shape != reference.shape:
        raise ValueError(
            "device and reference logits must be 2-D arrays of the same shape "
            f"[positions x vocab]; got device {device.shape} and reference {reference.shape}"
        )
    if device.shape[1] == 0:
        raise ValueError(
            f"logits have an empty vocab dimension: device {device.shape}, reference {reference.shape}"
        )
    return device, reference


def _row_chunks(n_rows: int, chunk_rows: int):
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    for start in range(0, n_rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, n_rows))


def _rowwise(kernel, device, reference, chunk_rows: int) -> np.ndarray:
    """Apply kernel(d, r) -> [rows] to float64 chunks; non-finite rows become NaN."""
    device, reference = _as_2d_pair(device, reference)
    out = np.empty(device.shape[0], dtype=np.float64)
    for rows in _row_chunks(device.shape[0], chunk_rows):
        d = device[rows].astype(np.float64)
        r = reference[rows].astype(np.float64)
        bad = ~(np.isfinite(d).all(axis=1) & np.isfinite(r).all(axis=1))
        # Non-finite rows are overwritten below; silence their inf-inf / 0-div warnings.
        with np.errstate(all="ignore"):
            values = kernel(d, r)
        values[bad] = np.nan
        out[rows] = values
    return out


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _cosine_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    # A zero row has no direction: 0/0 gives NaN, which is what we want.
    cos = _row_dot(d, r) / np.sqrt(_row_dot(d, d) * _row_dot(r, r))
    return np.clip(cos, -1.0, 1.0)  # rounding can give 1 + 1e-16


def _pearson_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    # Test constancy before centering: centering a constant row need not give exact zeros.
    constant = (d.max(axis=1) == d.min(axis=1)) | (r.max(axis=1) == r.min(axis=1))
    d = d - d.mean(axis=1, keepdims=True)
    r = r - r.mean(axis=1, keepdims=True)
    corr = _cosine_kernel(d, r)
    corr[constant] = np.nan
    return corr


def _kl_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    log_p = log_softmax(r, axis=1)  # reference
    log_ratio = log_softmax(d, axis=1)  # device, turned into log p - log q in place
    np.subtract(log_p, log_ratio, out=log_ratio)
    # Finite logits give finite log-probs, so p * (log p - log q) never hits 0 * inf.
    kl = _row_dot(np.exp(log_p, out=log_p), log_ratio)
    return np.maximum(kl, 0.0)  # KL >= 0; negatives are rounding


def _relative_l2_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    diff = d - r
    diff_norm = np.sqrt(_row_dot(diff, diff))
    ref_norm = np.sqrt(_row_dot(r, r))
    # Identical rows are 0 even when the reference row is all zeros (else 0/0);
    # a zero reference with a non-zero device row is +inf.
    return np.where(diff_norm == 0.0, 0.0, diff_norm / ref_norm)


def _max_abs_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.abs(d - r).max(axis=1)


def _mean_abs_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.abs(d - r).mean(axis=1)


def cosine_similarity(device, reference, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Cosine of each device row with its reference row; NaN if either row is all zeros."""
    return _rowwise(_cosine_kernel, device, reference, chunk_rows)


def pearson_correlation(device, reference, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Pearson correlation per row; NaN if either row is constant (undefined)."""
    return _rowwise(_pearson_kernel, device, reference, chunk_rows)


def kl_divergence(device, reference, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """KL(softmax(reference) || softmax(device)) per row, in nats."""
    return _rowwise(_kl_kernel, device, reference, chunk_rows)


def relative_l2(device, reference, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """||device - reference||_2 / ||reference||_2 per row."""
    return _rowwise(_relative_l2_kernel, device, reference, chunk_rows)


def max_abs_diff(device, reference, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Largest |device - reference| per row."""
    return _rowwise(_max_abs_kernel, device, reference, chunk_rows)


def mean_abs_diff(device, reference, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Mean |device - reference| per row."""
    return _rowwise(_mean_abs_kernel, device, reference, chunk_rows)


def nonfinite_rows(array, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Indices (int64, ascending) of the rows of a 2-D array holding any NaN or +-Inf."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array [positions x vocab], got shape {array.shape}")
    bad = np.zeros(array.shape[0], dtype=bool)
    for rows in _row_chunks(array.shape[0], chunk_rows):
        bad[rows] = ~np.isfinite(array[rows].astype(np.float64)).all(axis=1)
    return np.flatnonzero(bad)


def count_nonfinite(array_row) -> int:
    """Number of NaN or +-Inf entries (in a row, or any array)."""
    return int(np.count_nonzero(~np.isfinite(np.asarray(array_row, dtype=np.float64))))


ROW_METRICS: dict[str, RowMetric] = {
    "cosine_similarity": cosine_similarity,
    "pearson_correlation": pearson_correlation,
    "kl_divergence": kl_divergence,
    "relative_l2": relative_l2,
    "max_abs_diff": max_abs_diff,
    "mean_abs_diff": mean_abs_diff,
}
