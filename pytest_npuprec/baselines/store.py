"""A model's baseline folder on disk: read it, and publish a new one in one rename (atomic.py).

    <model>/reference.json   {"format", "model", "provenance", "lm_head", "prompts": [...], "recorded"}
    <model>/rows-<i>.npy     float32 [rows x hidden]: lm_head input rows of prompt i, one per scored position
    <model>/routing-<i>.npz  a MoE model's reference routing of prompt i at the same positions, compact
                             (measure/routing.py compact_routes: top_ids, kth, gaps; layers, top_k, tie_margin)
    <model>/device/<hw>.json device records (device_records.py)
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import staged_dir
from . import BaselineError, update_command

FORMAT = 1
REFERENCE_FILE = "reference.json"
DEVICE_DIR = "device"


def rows_name(index: int) -> str:
    return f"rows-{index:03d}.npy"


def routing_name(index: int) -> str:
    return f"routing-{index:03d}.npz"


@dataclass(frozen=True)
class RecordedPrompt:
    index: int
    id: str
    kind: str
    scored: tuple[int, ...]  # prompt + reference greedy continuation: what was scored
    positions: tuple[int, ...]
    generated: tuple[int, ...]  # the reference's greedy continuation (empty for a perplexity text)
    checksums: dict[str, list]  # logsumexp, top_ids per row
    rows_file: Path
    routing_file: Path | None = None  # a MoE model's compact reference routing (None: not recorded)

    def rows(self) -> np.ndarray:
        return np.load(self.rows_file, mmap_mode="r")


@dataclass(frozen=True)
class ReferenceBaseline:
    folder: Path
    doc: dict[str, Any]
    prompts: list[RecordedPrompt]

    provenance = property(lambda self: self.doc["provenance"])
    lm_head = property(lambda self: self.doc["lm_head"])
    max_tokens = property(lambda self: self.doc["max_tokens"])
    recorded = property(lambda self: self.doc.get("recorded", {}))


def load_reference(folder: Path, model: str) -> ReferenceBaseline | None:
    """The model's reference baseline; None when there is none; BaselineError when it is unreadable."""
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        prompts = [RecordedPrompt(index=p["index"], id=p["id"], kind=p["kind"], scored=tuple(p["scored"]),
                                  positions=tuple(p["positions"]), generated=tuple(p["generated"]),
                                  checksums=p["checksums"], rows_file=Path(folder) / rows_name(p["index"]),
                                  routing_file=Path(folder) / routing_name(p["index"]) if p.get("routing") else None)
                   for p in doc["prompts"]]
        for p in prompts:
            for file in (p.rows_file, p.routing_file):
                if file is not None and not file.is_file():
                    raise ValueError(f"{file.name} is missing")
            if len(p.checksums["logsumexp"]) != len(p.positions):
                raise ValueError(f"prompt {p.id}: {len(p.checksums['logsumexp'])} checksums for "
                                 f"{len(p.positions)} positions")
        doc["provenance"], doc["lm_head"], doc["max_tokens"]  # noqa: B018  (present)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaselineError(f"{path}: unreadable baseline of {model} ({exc!s}); record it again: "
                            f"{update_command(model)}") from None
    return ReferenceBaseline(Path(folder), doc, prompts)


def publish(folder: Path, reference: tuple[dict[str, Any], dict[int, np.ndarray]] | None = None,
            device_record: tuple[str, dict[str, Any]] | None = None,
            routing: dict[int, dict[str, np.ndarray]] | None = None) -> None:
    """Replace the model's folder in one rename: the new reference (doc, rows by prompt index; `routing`: its
    compact routing arrays by prompt index) and/or one device record (file name, doc); everything else of the old
    folder is carried over as it was."""
    folder = Path(folder)
    with staged_dir(folder) as tmp:
        if folder.is_dir():
            for item in folder.iterdir():
                replaced = reference is not None and (item.name == REFERENCE_FILE
                                                      or item.name.startswith(("rows-", "routing-")))
                if replaced or item.name.startswith("."):
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        if reference is not None:
            doc, rows = reference
            for index, array in rows.items():
                np.save(tmp / rows_name(index), np.ascontiguousarray(array, dtype=np.float32))
            for index, arrays in (routing or {}).items():
                np.savez(tmp / routing_name(index), **arrays)
            (tmp / REFERENCE_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        if device_record is not None:
            name, doc = device_record
            (tmp / DEVICE_DIR).mkdir(exist_ok=True)
            (tmp / DEVICE_DIR / name).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def folder_bytes(folder: Path) -> dict[str, int]:
    """file (relative) -> size, for what an update changed."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
