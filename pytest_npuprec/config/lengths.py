"""precision.lengths: prompt lengths in tokens (kernel shapes), each one prompt `len-<n>` (capture/lengths.py),
and precision.length_text: the text they are cut from (a file beside the config, or inline)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .reader import Reader
from .schema import LengthText, Prompt

KEY = "precision.lengths"
TEXT_KEY = "precision.length_text"


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


def parse_length_text(r: Reader, raw: Any, lengths: tuple[int, ...]) -> LengthText | None:
    """`{file: path}` (UTF-8, relative to the config's folder) or `{text: "..."}`; read and checked here."""
    if raw is None:
        return None
    r.mapping(raw, TEXT_KEY, frozenset({"file", "text"}))
    if len(raw) != 1:
        raise r.fail(TEXT_KEY, "expected exactly one of `file` (a UTF-8 text file, relative to the config's "
                               "folder) or `text`")
    if not lengths:
        raise r.fail(TEXT_KEY, f"set, but {KEY} is not; expected prompt lengths to cut from this text")
    if "text" in raw:
        text, source = r.typed(raw["text"], f"{TEXT_KEY}.text", str), f"{TEXT_KEY}.text"
    else:
        key = f"{TEXT_KEY}.file"
        name = r.typed(raw["file"], key, str)
        path = (Path(r.path).parent / name) if name.strip() else None
        if path is None or not path.is_file():
            raise r.fail(key, f"{str(path) if path else repr(name)}: no such file; expected a UTF-8 text file, "
                              "relative to the config's folder")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise r.fail(key, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise r.fail(key, f"{path}: cannot read the file ({exc.strerror})") from None
        source = path.name
    if not text.strip():
        raise r.fail(f"{TEXT_KEY}.{next(iter(raw))}", "no text; expected some text to cut the length prompts from")
    return LengthText(text=text, source=source)


def check_lengths_fit(r: Reader, lengths: tuple[int, ...], max_tokens: int, max_model_len: int) -> None:
    for i, n in enumerate(lengths):
        if n + max_tokens > max_model_len:
            raise r.fail(f"{KEY}[{i}]", f"{n} prompt tokens + max_tokens {max_tokens} = {n + max_tokens} exceeds "
                                        f"serve.max_model_len {max_model_len}; expected a shorter length or a "
                                        "larger max_model_len")
