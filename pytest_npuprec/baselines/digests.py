"""sha256 of checkpoint files and of the lm_head tensor, remembered across runs.

Hashing a checkpoint is the slow part of checking a baseline's provenance (about 1 s a GB: seconds every night
for every model of a real size). A digest is kept in `<cache root>/digests/` under a key of the file's identity and
change stamps (path, device, inode, size, mtime and ctime in ns). Writing to the file, or putting another file in its
place, changes the key: the kernel sets ctime on every change, and user space cannot set it back. A file changed
within the last seconds is hashed afresh every time (as git does with "racily clean" files): a second write in the
same clock tick could otherwise leave every stamp as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from ..atomic import atomic_write_text
from ..env_vars import cache_root

SETTLED_NS = 2_000_000_000  # a file unchanged for this long is remembered


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    return remembered(path, "file", lambda: _hash_file(path, chunk))


def remembered(path: Path, what: str, compute: Callable[[], str]) -> str:
    """compute() (a sha256 hex digest of `what` in the file at `path`), or what it gave for these same bytes."""
    before = _stamp(path)
    entry = cache_root() / "digests" / hashlib.sha256(json.dumps([before, what]).encode()).hexdigest()
    try:
        kept = entry.read_text(encoding="utf-8").strip()
        if len(kept) == 64 and all(c in "0123456789abcdef" for c in kept):
            return kept
    except OSError:
        pass
    digest = compute()
    settled = time.time_ns() - max(before[-2:]) > SETTLED_NS
    if settled and _stamp(path) == before:  # unchanged while it was read
        try:
            atomic_write_text(entry, digest + "\n")
        except OSError:
            pass  # a read-only cache: hash again next time
    return digest


def _stamp(path: Path) -> list:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _hash_file(path: Path, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
