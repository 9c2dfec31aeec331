"""Which sequences both sides score, and, under precision.reference_scoring: device, what stands for the
reference's greedy tokens.

Scored sequence = prompt + one side's greedy continuation: the reference's (reference_scoring: reference, the
default) or the device's (device: the reference then generates nothing and makes one teacher-forced pass).
In device mode the reference's "greedy tokens" are its argmax at each continuation row, i.e. what it would pick
after the device's prefix: up to the first divergence that is exactly its own greedy continuation, so token and
prefix agreement (metrics/tokens.py, tie-aware) judge the same thing in both modes.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..config.schema import PositionsMode
from .multimodal import text_positions
from .records import PromptInput


def scored_positions(prompt_len: int, scored_len: int, mode: PositionsMode) -> tuple[int, ...]:
    """Positions whose next-token logits are compared (position p predicts token p + 1)."""
    start = 0 if mode == "all" else prompt_len - 1
    return tuple(range(start, scored_len - 1))


def scored_sequences(prompts: Sequence[PromptInput], continuations: Mapping[int, tuple[int, ...]],
                     positions_mode: PositionsMode) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
    """prompt index -> scored tokens, and -> scored positions (compared prompts: `positions_mode`; prefix-cache
    prompts: their continuation; a perplexity text: every position, and no continuation)."""
    scored, positions = {}, {}
    for p in prompts:
        continuation = continuations[p.index] if p.kind in ("compare", "prefix_cache") else ()
        scored[p.index] = p.token_ids + tuple(continuation)
        mode = {"compare": positions_mode, "prefix_cache": "continuation"}.get(p.kind, "all")
        # rows at image placeholders compare no text (capture/multimodal.py): never scored
        positions[p.index] = text_positions(scored_positions(len(p.token_ids), len(scored[p.index]), mode),
                                            p.media_positions)
    return scored, positions


def reference_argmax(prompts: Sequence[PromptInput], positions: Mapping[int, tuple[int, ...]],
                     logits_path: Callable[[int], Path]) -> dict[int, tuple[int, ...]]:
    """prompt index -> the reference's argmax at each continuation row of its scored logits (a non-finite
    row gives some id; the token checks then see that row and report it as non-finite)."""
    out = {}
    for p in prompts:
        rows = np.flatnonzero(np.asarray(positions[p.index]) >= len(p.token_ids) - 1)
        logits = np.load(logits_path(p.index), mmap_mode="r")
        out[p.index] = tuple(int(np.argmax(logits[row])) for row in rows)
    return out
