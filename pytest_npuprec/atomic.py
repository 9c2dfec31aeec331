"""Publish a folder or a file all at once: write it under a temporary name next to its target, then
``os.replace`` it into place. A reader sees the old target or the whole new one, never half of it,
and a failure leaves neither a half target nor a temporary behind.

    with staged_dir(target) as tmp:      # an empty folder next to target
        write_files_into(tmp)            # an exception here: tmp is removed, target untouched
    # here target is the finished folder

    atomic_write_text(path, text)        # a file, likewise

What is published gets the modes a plain ``mkdir`` / ``open`` would give it (``tempfile`` makes
its folders and files private to the owner, and safetensors its files). Standard library only and nothing from the plugin:
the stand-ins and their standalone converter (``python -m pytest_npuprec.standins.qat_convert``)
use it too.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator, Literal

# what publishing does when the target is already there (a file, or a folder that is not empty;
# an empty folder is simply replaced):
#   replace: the new one takes its place (the old one is renamed aside, then deleted)
#   keep:    someone else published first; theirs stays and ours is dropped
#   refuse:  FileExistsError (checked before any work, and again by the rename)
Existing = Literal["replace", "keep", "refuse"]


def temp_sibling(target: Path | str) -> Path:
    """A new empty folder ``.<name>.tmp-XXXX`` next to ``target`` (same file system: a rename publishes it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)).absolute()


def publish_dir(src: Path | str, target: Path | str, existing: Existing = "replace") -> bool:
    """Move the finished folder ``src`` to ``target`` in one rename, with plain modes (:func:`plain_modes`).

    Returns False only when ``existing="keep"`` found ``target`` already there (``src`` is left
    for the caller to remove)."""
    src, target = Path(src), Path(target)
    if existing == "refuse":
        refuse_occupied(target)
    plain_modes(src)
    aside = src.with_name(src.name + ".old") if existing == "replace" and _occupied(target) else None
    if aside is not None:
        os.replace(target, aside)
    try:
        os.replace(src, target)
    except OSError:
        if aside is not None:
            os.replace(aside, target)  # put the old one back
        if existing == "keep" and _occupied(target):
            return False
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink()
    return True


@contextlib.contextmanager
def staged_dir(target: Path | str, existing: Existing = "replace", create: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``target`` to fill; publish it as ``target`` when the block
    ends normally (see :data:`Existing`), remove it when it raises.

    ``create=False`` yields a path that does not exist yet (inside the temporary folder), for tools
    that insist on creating their output folder themselves; that folder is what gets published."""
    target = Path(target)
    if existing == "refuse":
        refuse_occupied(target)
    tmp = temp_sibling(target)
    try:
        out = tmp if create else tmp / target.name
        yield out
        publish_dir(out, target, existing)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when `tmp` itself was published


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; it replaces ``path`` when the block ends
    normally and is deleted when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)


def plain_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain mkdir / open would: ``tempfile`` makes
    its folders 0700 and some writers their files 0600 (safetensors does). Executable bits stay."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, (0o777 if st.st_mode & 0o111 else 0o666) & ~mask)


def refuse_occupied(target: Path) -> None:
    if _occupied(target):
        raise FileExistsError(f"output {target} exists and is not an empty folder")


def _occupied(target: Path) -> bool:
    """``target`` exists and a rename of a folder onto it would not simply replace it."""
    if not target.is_dir() or target.is_symlink():
        return os.path.lexists(target)
    return any(target.iterdir())


def umask() -> int:
    """The process umask, read without changing it where Linux allows (another thread may be
    creating files meanwhile); else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
