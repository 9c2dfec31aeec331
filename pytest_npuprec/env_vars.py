"""Setting environment variables for the span of one step (an engine start, a build)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


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
