"""The bundled training text for stand-in models.

Everything under ``standins/data/`` is original prose written for this
project (short factual paragraphs, written-out arithmetic, a few small
stories) plus a handful of chat question/answer pairs.  It is small on
purpose: a stand-in is trained on it for a few hundred steps until it
predicts it confidently, which gives the model a realistic, peaked logit
spread (a randomly initialised model has near-uniform logits that hide
device faults).

Documents are the blank-line separated paragraphs of ``*.txt``; chat
pairs live in ``chat.jsonl`` as ``{"user": ..., "assistant": ...}``.
Other ``*.jsonl`` files hold conversations for stand-ins with their own
chat format (guard verdicts, thinking sections), one per line, either in
that pair form or as ``{"messages": [{"role": ..., "content": ...}, ...]}``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources

TEXT_FILES = ("prose.txt", "arithmetic.txt")
CHAT_FILE = "chat.jsonl"


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("data").joinpath(name).read_bytes()


def data_files() -> dict[str, bytes]:
    """Raw bytes of every data file that feeds a build, by file name."""
    return {name: _read(name) for name in (*TEXT_FILES, CHAT_FILE)}


def corpus_digest() -> str:
    """sha256 over the names and bytes of the default data files (part of the cache key)."""
    return files_digest((*TEXT_FILES, CHAT_FILE))


def files_digest(names) -> str:
    """sha256 over the names and bytes of the named data files."""
    h = hashlib.sha256()
    for name in sorted(set(names)):
        blob = _read(name)
        h.update(name.encode() + b"\0" + str(len(blob)).encode() + b"\0" + blob)
    return h.hexdigest()


def documents() -> list[str]:
    """The prose documents, in file order (deterministic)."""
    docs: list[str] = []
    for name in TEXT_FILES:
        text = _read(name).decode("utf-8").replace("\r\n", "\n")
        docs.extend(p.strip() for p in text.split("\n\n") if p.strip())
    return docs


def conversations(name: str = CHAT_FILE) -> list[list[dict[str, str]]]:
    """The conversations of a ``*.jsonl`` data file, in file order, as message lists."""
    out = []
    for number, line in enumerate(_read(name).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" in row:
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        elif "user" in row and "assistant" in row:
            messages = [{"role": "user", "content": row["user"]}, {"role": "assistant", "content": row["assistant"]}]
        else:
            raise ValueError(f"{name}:{number}: expected 'messages' or 'user' and 'assistant'")
        out.append(messages)
    return out
