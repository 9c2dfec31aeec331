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
    """sha256 over the names and bytes of all data files (part of the cache key)."""
    h = hashlib.sha256()
    for name, blob in sorted(data_files().items()):
        h.update(name.encode() + b"\0" + str(len(blob)).encode() + b"\0" + blob)
    return h.hexdigest()


def documents() -> list[str]:
    """The prose documents, in file order (deterministic)."""
    docs: list[str] = []
    for name in TEXT_FILES:
        text = _read(name).decode("utf-8").replace("\r\n", "\n")
        docs.extend(p.strip() for p in text.split("\n\n") if p.strip())
    return docs


def chat_pairs() -> list[tuple[str, str]]:
    """The chat (user, assistant) pairs, in file order."""
    pairs = []
    for line in _read(CHAT_FILE).decode("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            pairs.append((row["user"], row["assistant"]))
    return pairs
