"""Write a model's report (JSON and Markdown) atomically: a reader never sees half a file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .render import render_markdown


def write_report(report: dict[str, Any], report_dir: Path) -> dict[str, Path]:
    paths = {"json": report_dir / f"{report['model']}.json", "markdown": report_dir / f"{report['model']}.md"}
    atomic_write_text(paths["json"], json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], render_markdown(report))
    return paths
