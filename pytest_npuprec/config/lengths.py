"""precision.lengths: prompt lengths in tokens (kernel shapes), each one prompt `len-<n>` (capture/lengths.py)."""
from __future__ import annotations

from typing import Any

from .reader import Reader
from .schema import Prompt

KEY = "precision.lengths"


def length_id(n: int) -> str:
    return f"len-{n}"


def parse_lengths(r: Reader, raw: Any, prompts: tuple[Prompt, ...]) -> tuple[int, ...]:
    if raw is None:
        return ()
    r.typed(raw, KEY, list)
    if not raw:
        raise r.fail(KEY, "empty; expected prompt lengths in tokens, e.g. [1, 127, 128, 129] (or leave it out)")
    ids = {p.id for p in prompts}
    seen: set[int] = set()
    for i, n in enumerate(raw):
        r.typed(n, f"{KEY}[{i}]", int)
        if n < 1:
            raise r.fail(f"{KEY}[{i}]", f"expected a length of at least 1 token, got {n}")
        if n in seen:
            raise r.fail(f"{KEY}[{i}]", f"length {n} is listed twice; expected unique lengths")
        if length_id(n) in ids:
            raise r.fail(f"{KEY}[{i}]", f"prompt id {length_id(n)!r} is already used in precision.prompts; "
                                        "expected another id for that prompt")
        seen.add(n)
    return tuple(raw)


def check_lengths_fit(r: Reader, lengths: tuple[int, ...], max_tokens: int, max_model_len: int) -> None:
    for i, n in enumerate(lengths):
        if n + max_tokens > max_model_len:
            raise r.fail(f"{KEY}[{i}]", f"{n} prompt tokens + max_tokens {max_tokens} = {n + max_tokens} exceeds "
                                        f"serve.max_model_len {max_model_len}; expected a shorter length or a "
                                        "larger max_model_len")
