"""Row-wise comparisons of device logits against reference logits.

Every function takes two 2-D arrays [positions x vocab] of pre-softmax logits
and returns a float64 array [positions]. Work is done in float64, a chunk of
rows at a time, so a 166k vocabulary never needs a full [P x V] float64 copy.
A row holding NaN or +-Inf in either input yields NaN for that row.

compare_rows computes every one of them (and each side's non-finite rows) in one pass, with the
same values to the bit; the per-metric functions are the definitions it is tested against.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

CHUNK_ROWS = 32  # KL holds ~6 float64 chunks at once: ~250 MB at a 166k vocab
# compare_rows works on blocks of about this many float64 values per buffer (4 MiB): its ~25 sweeps
# over a block then hit the cache, where a 32-row chunk (39 MB at a 151,936 vocab) goes to memory.
BLOCK_VALUES = 1 << 19

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


def _cosine_from_dots(dot_dr: np.ndarray, dot_dd: np.ndarray, dot_rr: np.ndarray) -> np.ndarray:
    # A zero row has no direction: 0/0 gives NaN, which is what we want.
    cos = dot_dr / np.sqrt(dot_dd * dot_rr)
    return np.clip(cos, -1.0, 1.0)  # rounding can give 1 + 1e-16


def _cosine_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _cosine_from_dots(_row_dot(d, r), _row_dot(d, d), _row_dot(r, r))


def _constant_rows(d_max: np.ndarray, d_min: np.ndarray, r_max: np.ndarray, r_min: np.ndarray) -> np.ndarray:
    return (d_max == d_min) | (r_max == r_min)


def _pearson_from_centered(d_centered: np.ndarray, r_centered: np.ndarray, constant: np.ndarray) -> np.ndarray:
    corr = _cosine_kernel(d_centered, r_centered)
    corr[constant] = np.nan
    return corr


def _pearson_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    # Test constancy before centering: centering a constant row need not give exact zeros.
    constant = _constant_rows(d.max(axis=1), d.min(axis=1), r.max(axis=1), r.min(axis=1))
    d = d - d.mean(axis=1, keepdims=True)
    r = r - r.mean(axis=1, keepdims=True)
    return _pearson_from_centered(d, r, constant)


def _kl_from_log_probs(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL per row from log p (reference) and log q (device); overwrites both."""
    log_ratio = np.subtract(log_p, log_q, out=log_q)
    # Finite logits give finite log-probs, so p * (log p - log q) never hits 0 * inf.
    kl = _row_dot(np.exp(log_p, out=log_p), log_ratio)
    return np.maximum(kl, 0.0)  # KL >= 0; negatives are rounding


def _kl_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _kl_from_log_probs(log_softmax(r, axis=1), log_softmax(d, axis=1))


def _relative_l2_from_norms(diff_norm: np.ndarray, ref_norm: np.ndarray) -> np.ndarray:
    # Identical rows are 0 even when the reference row is all zeros (else 0/0);
    # a zero reference with a non-zero device row is +inf.
    return np.where(diff_norm == 0.0, 0.0, diff_norm / ref_norm)


def _relative_l2_kernel(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    diff = d - r
    return _relative_l2_from_norms(np.sqrt(_row_dot(diff, diff)), np.sqrt(_row_dot(r, r)))


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


# ---------------------------------------------------------------- every row metric in one pass


@dataclass(frozen=True)
class RowComparison:
    """Every row metric of a device/reference pair, and the rows that are not finite on either side."""

    metrics: dict[str, np.ndarray]  # ROW_METRICS name -> float64 [rows]; NaN where either row is not finite
    device_nonfinite: np.ndarray  # int64 row indices, ascending: nonfinite_rows(device)
    reference_nonfinite: np.ndarray  # nonfinite_rows(reference)


def compare_rows(device, reference, *, chunk_rows: int = CHUNK_ROWS) -> RowComparison:
    """Every ROW_METRICS value and both sides' non-finite rows in one pass over the logits.

    Each row is converted to float64 and checked for NaN/Inf once, and the metrics share their row
    dot products and maxima. Values are bitwise those of the per-metric functions called with the
    same chunk_rows; working memory is a few rows (BLOCK_VALUES), whatever chunk_rows is.
    """
    device, reference = _as_2d_pair(device, reference)
    n_rows, vocab = device.shape
    metrics = {name: np.empty(n_rows, dtype=np.float64) for name in ROW_METRICS}
    device_finite = np.empty(n_rows, dtype=bool)
    reference_finite = np.empty(n_rows, dtype=bool)
    blocks = list(_fused_blocks(n_rows, chunk_rows, block_rows=max(2, BLOCK_VALUES // vocab)))
    scratch = _BlockScratch(max((rows.stop - rows.start for rows in blocks), default=0), vocab)
    for rows in blocks:
        d, r, work, log_p, log_q = scratch.views(rows.stop - rows.start)
        np.copyto(d, device[rows], casting="unsafe")  # as .astype(np.float64)
        np.copyto(r, reference[rows], casting="unsafe")
        device_finite[rows] = scratch.finite_rows(d)
        reference_finite[rows] = scratch.finite_rows(r)
        with np.errstate(all="ignore"):  # non-finite rows are overwritten below
            values = _block_metrics(d, r, work, log_p, log_q)
        bad = ~(device_finite[rows] & reference_finite[rows])
        for name, block_values in values.items():
            block_values[bad] = np.nan
            metrics[name][rows] = block_values
    return RowComparison(metrics, np.flatnonzero(~device_finite), np.flatnonzero(~reference_finite))


def _fused_blocks(n_rows: int, chunk_rows: int, block_rows: int):
    """Row slices of at most block_rows + 1 rows, each inside one chunk of _row_chunks.

    A block never holds a lone row of a longer chunk: np.einsum sums a 1-row operand in another
    order (its buffered loop) than each row of a 2-D one (its unbuffered 2-D loop), so that row's
    dot products could differ in the last bit from the chunked per-metric functions'.
    """
    for chunk in _row_chunks(n_rows, chunk_rows):
        starts = list(range(chunk.start, chunk.stop, block_rows))
        if len(starts) > 1 and chunk.stop - starts[-1] == 1:
            starts.pop()
        for start, stop in zip(starts, starts[1:] + [chunk.stop]):
            yield slice(start, stop)


class _BlockScratch:
    """float64 buffers reused by every block, so no block allocates (and page-faults) row-sized arrays."""

    def __init__(self, max_rows: int, vocab: int):
        self._buffers = [np.empty((max_rows, vocab), dtype=np.float64) for _ in range(5)]
        self._flags = np.empty((max_rows, vocab), dtype=bool)

    def views(self, n_rows: int) -> list[np.ndarray]:
        return [buffer[:n_rows] for buffer in self._buffers]

    def finite_rows(self, block: np.ndarray) -> np.ndarray:
        return np.isfinite(block, out=self._flags[:len(block)]).all(axis=1)


def _block_metrics(d: np.ndarray, r: np.ndarray, work: np.ndarray, log_p: np.ndarray,
                   log_q: np.ndarray) -> dict[str, np.ndarray]:
    """ROW_METRICS of a float64 block, with the kernels' arithmetic; overwrites every argument."""
    dot_rr = _row_dot(r, r)
    values = {"cosine_similarity": _cosine_from_dots(_row_dot(d, r), _row_dot(d, d), dot_rr)}
    diff = np.subtract(d, r, out=work)
    values["relative_l2"] = _relative_l2_from_norms(np.sqrt(_row_dot(diff, diff)), np.sqrt(dot_rr))
    abs_diff = np.abs(diff, out=diff)
    values["max_abs_diff"] = abs_diff.max(axis=1)
    values["mean_abs_diff"] = abs_diff.mean(axis=1)
    d_max, r_max = d.max(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
    constant = _constant_rows(d_max[:, 0], d.min(axis=1), r_max[:, 0], r.min(axis=1))
    values["kl_divergence"] = _kl_from_log_probs(_log_softmax_into(r, r_max, log_p, work),
                                                 _log_softmax_into(d, d_max, log_q, work))
    values["pearson_correlation"] = _pearson_from_centered(_center_in_place(d), _center_in_place(r), constant)
    return {name: values[name] for name in ROW_METRICS}


def _log_softmax_into(x: np.ndarray, x_max: np.ndarray, out: np.ndarray, work: np.ndarray) -> np.ndarray:
    """scipy.special.log_softmax(x, axis=1) into out, given x's row maxima [rows x 1]: the same
    operations in the same order, so the same bits, without its three row-sized temporaries."""
    np.subtract(x, np.where(np.isfinite(x_max), x_max, 0.0), out=out)
    log_sum = np.log(np.exp(out, out=work).sum(axis=1, keepdims=True))
    return np.subtract(out, log_sum, out=out)


def _center_in_place(block: np.ndarray) -> np.ndarray:
    return np.subtract(block, block.mean(axis=1, keepdims=True), out=block)
