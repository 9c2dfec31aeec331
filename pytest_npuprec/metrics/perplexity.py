"""Perplexity of a token sequence from its next-token logits (pure numpy/scipy)."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

CHUNK_ROWS = 32


def token_nll(logits, targets) -> np.ndarray:
    """-log p(target) per row of [positions x vocab] logits, in float64; NaN for a non-finite row."""
    logits = np.asarray(logits)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"expected logits [positions x vocab] and one target per row; got logits "
                         f"{logits.shape} and targets {targets.shape}")
    if len(targets) and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"target token ids must lie in [0, {logits.shape[1]}); got "
                         f"{targets.min()}..{targets.max()}")
    out = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        chunk = logits[rows].astype(np.float64)
        finite = np.isfinite(chunk).all(axis=1)
        with np.errstate(all="ignore"):
            nll = logsumexp(chunk, axis=1) - chunk[np.arange(len(chunk)), targets[rows]]
        nll[~finite] = np.nan
        out[rows] = nll
    return out


def perplexity(nll: np.ndarray) -> float:
    """exp(mean NLL); NaN if any row is NaN or there are no rows."""
    nll = np.asarray(nll, dtype=np.float64)
    if nll.size == 0:
        return float("nan")
    return float(np.exp(np.mean(nll)))
