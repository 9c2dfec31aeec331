"""precision.lengths -> prompts of exactly n tokens, cut from one fixed text (repeated as needed).

Kernel paths switch on shape (a tiling at 128 tokens, a MoE gating op at 2048): prompts of chosen token
lengths cover them without hand-written text. The token ids are cut, not the text, so the length is exact.
"""
from __future__ import annotations

from typing import Any

from ..config.lengths import length_id
from .records import PromptInput

FIXED_TEXT = (
    "The river runs past the old mill and under the stone bridge, where the town keeps its market on "
    "Saturdays. Farmers bring apples, cheese and bread; the baker sells out before noon. In winter the "
    "water rises and the children watch the ice float down towards the sea. "
)


def length_prompts(lengths: tuple[int, ...], tokenizer: Any, first_index: int) -> list[PromptInput]:
    if not lengths:
        return []
    needed = max(lengths)
    text, ids = FIXED_TEXT, list(tokenizer(FIXED_TEXT, add_special_tokens=True)["input_ids"])
    while len(ids) < needed:
        text += FIXED_TEXT
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return [PromptInput(index=first_index + i, id=length_id(n), label=f"{n} tokens of a fixed text",
                        token_ids=tuple(ids[:n])) for i, n in enumerate(lengths)]
