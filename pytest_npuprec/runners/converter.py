"""Run a checkpoint converter (the role of a model's qat-convert.py) into a folder, atomically.

The converter is either an importable function `package.module:function(src, out, group_size)` or
a command whose arguments may hold {input}, {output} and {group_size}, run from inside the QAT
checkpoint's folder (where a model's own qat-convert.py ships). It writes into a fresh
temporary sibling folder; only a converter that succeeds and leaves a config.json gets published.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from ..atomic import staged_dir
from ..config.schema import QatEquivalenceCheck
from ..errors import NpuprecError


class ConversionError(NpuprecError, RuntimeError):
    pass


def convert_checkpoint(check: QatEquivalenceCheck, source: Path, target: Path) -> Path:
    with staged_dir(target, create=False) as out:  # the converter creates `out` itself
        _run(check, Path(source), out)
        if not (out / "config.json").is_file():
            raise ConversionError(f"converter {_describe(check.converter)} finished but wrote no config.json "
                                  f"into {out}; expected a loadable checkpoint folder")
    return target


def _describe(converter: str | tuple[str, ...]) -> str:
    return converter if isinstance(converter, str) else " ".join(converter)


def _run(check: QatEquivalenceCheck, source: Path, out: Path) -> None:
    if isinstance(check.converter, str):
        module_name, _, func_name = check.converter.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise ConversionError(f"converter {check.converter!r} cannot be imported: {exc}") from None
        func(source, out, group_size=check.group_size)
        return
    fill = {"input": str(source), "output": str(out), "group_size": str(check.group_size)}
    argv = [sys.executable if a == "python" else a.format(**fill) for a in check.converter]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=source)
    if done.returncode != 0:
        raise ConversionError(f"converter command failed (exit {done.returncode}): {' '.join(argv)}\n"
                              f"{(done.stderr or done.stdout)[-2000:]}")
