"""Is a weight tensor ternary, scale x {-1, 0, 1}, per group of input elements? (pure numpy)"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TernaryResult:
    groups: int
    bad_groups: int  # groups with more than one nonzero magnitude (or a non-finite value)
    worst_group: int  # index of the group with the most distinct values (-1 if none is bad)
    worst_values: int  # distinct values in that group (3 or fewer for a ternary group)

    @property
    def ternary(self) -> bool:
        return self.bad_groups == 0


def grouped(weight: np.ndarray, group_size: int) -> np.ndarray:
    """[out x in] (or any shape: flattened per row) -> [groups x group_size]; -1 = the whole tensor."""
    weight = np.asarray(weight)
    if group_size == -1:
        return weight.reshape(1, -1)
    rows = weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight.reshape(1, -1)
    if rows.shape[1] % group_size:
        raise ValueError(f"input dimension {rows.shape[1]} is not a multiple of group_size {group_size}")
    return rows.reshape(-1, group_size)


def check_ternary(weight: np.ndarray, group_size: int) -> TernaryResult:
    groups = grouped(weight, group_size)
    magnitude = np.abs(groups.astype(np.float32, copy=False))
    finite = np.isfinite(magnitude).all(axis=1)
    largest = magnitude.max(axis=1)
    smallest_nonzero = np.where(magnitude > 0, magnitude, np.inf).min(axis=1)
    # a ternary group has one nonzero magnitude (or none: an all-zero group)
    ok = finite & ((largest == 0) | (smallest_nonzero == largest))
    bad = np.flatnonzero(~ok)
    if len(bad) == 0:
        return TernaryResult(len(groups), 0, -1, 0)
    values = np.sort(groups[bad].astype(np.float32, copy=False), axis=1)
    distinct = 1 + np.count_nonzero(np.diff(values, axis=1) != 0, axis=1)  # NaN != NaN: counted apart
    worst = int(np.argmax(distinct))
    return TernaryResult(len(groups), len(bad), int(bad[worst]), int(distinct[worst]))
