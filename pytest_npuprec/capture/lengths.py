"""precision.lengths -> prompts of exactly n tokens, cut from one token stream (repeated as needed).

Kernel paths switch on shape (a tiling at 128 tokens, a MoE gating op at 2048): prompts of chosen token
lengths cover them without hand-written text. The token ids are cut, not the text, so the length is exact.

The stream is the configured `precision.length_text`; else, for a stand-in, its own training stream (its
training documents in build order, each tokenized as the build does and followed by EOS: text it predicts
confidently, so the comparison stays within its calibrated floor); else, for a real model, a fixed text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.lengths import length_id
from ..config.schema import ModelConfig
from ..errors import NpuprecError
from .records import PromptInput

FIXED_TEXT = (
    "The river runs past the old mill and under the stone bridge, where the town keeps its market on "
    "Saturdays. Farmers bring apples, cheese and bread; the baker sells out before noon. In winter the "
    "water rises and the children watch the ice float down towards the sea. "
)


class LengthTextError(NpuprecError, ValueError):
    pass


@dataclass(frozen=True)
class LengthStream:
    token_ids: tuple[int, ...]  # at least as long as the longest length
    source: str  # what the prompts are cut from, for their labels


def length_prompts(config: ModelConfig, tokenizer: Any, first_index: int) -> list[PromptInput]:
    assert config.precision is not None
    lengths = config.precision.lengths
    if not lengths:
        return []
    stream = length_stream(config, tokenizer, max(lengths))
    return [PromptInput(index=first_index + i, id=length_id(n), label=f"{n} tokens of {stream.source}",
                        token_ids=stream.token_ids[:n]) for i, n in enumerate(lengths)]


def length_stream(config: ModelConfig, tokenizer: Any, needed: int) -> LengthStream:
    assert config.precision is not None
    configured = config.precision.length_text
    if configured is not None:
        stream = LengthStream(_repeated_text(configured.text, tokenizer, needed), configured.source)
    elif config.stand_in:
        stream = LengthStream(_cycled(standin_stream(config.stand_in, tokenizer), needed),
                              f"the {config.stand_in} training stream")
    else:
        stream = LengthStream(_repeated_text(FIXED_TEXT, tokenizer, needed), "a fixed text")
    if len(stream.token_ids) < needed:
        raise LengthTextError(f"{config.path}: precision.lengths: {stream.source} tokenizes to no tokens; "
                              "expected some text to cut the length prompts from")
    return stream


def standin_stream(name: str, tokenizer: Any) -> list[int]:
    """The token stream a stand-in was trained on: each training document's pieces tokenized apart (as the
    build does: a chat prompt and its answer separately), then EOS."""
    from ..standins import corpus
    from ..standins.registry import get_spec

    spec = get_spec(name)
    pieces = spec.training_pieces() if hasattr(spec, "training_pieces") else [(d,) for d in corpus.documents()]
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for piece in pieces:
        for part in piece:
            ids.extend(tokenizer(part, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return ids


def _cycled(ids: list[int], needed: int) -> tuple[int, ...]:
    """The stream run round again from its start until it is `needed` long (training windows wrap the same way)."""
    return tuple((ids * -(-needed // len(ids)))[:needed]) if ids else ()


def _repeated_text(text: str, tokenizer: Any, needed: int) -> tuple[int, ...]:
    """The text repeated and tokenized as one plain-text prompt until it has `needed` tokens."""
    once = len(tokenizer(text, add_special_tokens=True)["input_ids"])
    if once == 0:
        return ()
    copies = max(1, -(-needed // once))
    while True:
        ids = list(tokenizer(text * copies, add_special_tokens=True)["input_ids"])
        if len(ids) >= needed:
            return tuple(ids)
        copies += 1
