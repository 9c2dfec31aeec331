"""Write a model's report (JSON, Markdown and HTML) atomically: a reader never sees half a file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .html import render_html
from .render import render_markdown


def write_report(report: dict[str, Any], report_dir: Path) -> dict[str, Path]:
    paths = {name: report_dir / f"{report['model']}.{ext}" for name, ext in (("json", "json"), ("markdown", "md"),
                                                                             ("html", "html"))}
    report["html"] = paths["html"].name  # the Markdown links the page beside it
    atomic_write_text(paths["json"], json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], render_markdown(report))
    atomic_write_text(paths["html"], render_html(report))
    return paths
