"""Write a model's report (JSON and Markdown) atomically: a reader never sees half a file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .render import render_markdown


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_report(report: dict[str, Any], report_dir: Path) -> dict[str, Path]:
    paths = {"json": report_dir / f"{report['model']}.json", "markdown": report_dir / f"{report['model']}.md"}
    atomic_write_text(paths["json"], json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], render_markdown(report))
    return paths
