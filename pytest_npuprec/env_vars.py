"""The environment variables pytest-npuprec reads, and setting variables for the span of one step."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

MODEL_ROOT_ENV = "NPUPREC_MODEL_ROOT"  # ':'-separated folders of real checkpoints (--model-root)
CACHE_DIR_ENV = "NPUPREC_CACHE_DIR"  # where stand-ins are built (default ~/.cache/pytest-npuprec)
BASELINE_DIR_ENV = "NPUPREC_BASELINE_DIR"  # folder of <model>/ baselines (--npuprec-baseline-dir)
STANDINS_SOURCE_ENV = "NPUPREC_STANDINS"  # shipped (default) | build: skip the stand-ins the package ships


def cache_root() -> Path:
    """``$NPUPREC_CACHE_DIR`` or ``~/.cache/pytest-npuprec``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pytest-npuprec"


@contextlib.contextmanager
def temporary_env(updates: dict[str, str]) -> Iterator[None]:
    """Set `updates` in os.environ (child processes inherit them) and restore the old values after."""
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
