"""The parallel_layouts check's capture: each other layout's engine (started after the configured one closed)
generates the compared prompts greedily with its step logits, then scores the same teacher-forced sequences as the
configured engine did, with the same taps (routing on a MoE model). Its side is `layout_side(i)`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..runners.scoring import ScoreRequest
from .records import PromptInput
from .steps import generate_with_steps


def layout_side(index: int) -> str:
    """The capture side of the parallel_layouts check's layout number `index` (0-based, in the YAML's order)."""
    return f"device-layout{index + 1}"


def layout_pass(dev: Any, compare: Sequence[PromptInput], max_tokens: int, side: str,
                path_of: Callable[[str, int], Path], requests: Sequence[ScoreRequest]) -> dict[int, tuple[int, ...]]:
    """Generate (step logits to side's step files), then score `requests` (the compared prompts'); returns the
    greedy continuation by prompt index."""
    generated = generate_with_steps(dev, compare, max_tokens, side, path_of)
    dev.score(requests)
    return generated
