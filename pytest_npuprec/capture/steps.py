"""The device's own generation, step by step: where its step logits live in a capture, and the extra
generations the step-level checks need (each prompt alone, the batch reversed; another engine).

Step logits of generation side S (e.g. "device") are the logits side "S-steps": row k predicts S's
generated token k, at position len(prompt) - 1 + k of prompt + S's tokens (runners/step_logits.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .records import PromptCapture, PromptInput, outputs_by_prompt

ALONE, REVERSED = "device-alone", "device-reversed"  # batch_invariance's generations


def steps_side(generation: str) -> str:
    return f"{generation}-steps"


def step_positions(record: PromptCapture, generation: str = "device") -> np.ndarray:
    """The position of each step-logits row of `generation` (row k predicts generated token k)."""
    n = len(record.generated[generation])
    return np.arange(n, dtype=np.int64) + len(record.prompt.token_ids) - 1


def generate_with_steps(dev: Any, prompts: Sequence[PromptInput], max_tokens: int, side: str,
                        path_of: Callable[[str, int], Path]) -> dict[int, tuple[int, ...]]:
    """One batched greedy generation of `prompts` in the given order; step logits to side's files."""
    out = dev.generate([p.token_ids for p in prompts], max_tokens,
                       logits_out=[path_of(steps_side(side), p.index) for p in prompts],
                       **({"images": [p.images for p in prompts]} if any(p.images for p in prompts) else {}))
    return outputs_by_prompt(prompts, out, f"the {side} generation")


def batch_passes(dev: Any, prompts: Sequence[PromptInput], max_tokens: int,
                 path_of: Callable[[str, int], Path]) -> dict[str, dict[int, tuple[int, ...]]]:
    """batch_invariance: each prompt alone, then the whole batch in reversed order (the batch itself is
    the main "device" generation)."""
    alone: dict[int, tuple[int, ...]] = {}
    for p in prompts:
        alone.update(generate_with_steps(dev, [p], max_tokens, ALONE, path_of))
    return {ALONE: alone, REVERSED: generate_with_steps(dev, list(prompts)[::-1], max_tokens, REVERSED, path_of)}
