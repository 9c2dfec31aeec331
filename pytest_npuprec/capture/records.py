"""What a capture holds: per prompt, both sides' greedy tokens and logits as arrays, savable.

Logits live in one float32 .npy file per (side, prompt) inside the capture folder and are
memory-mapped on load, so comparing many prompts does not hold them all in memory.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

SIDES = ("reference", "device")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PromptInput:
    index: int
    id: str
    label: str  # short text for tables
    token_ids: tuple[int, ...]


@dataclass
class PromptCapture:
    """One prompt, both sides. Row k of each logits array predicts scored[positions[k] + 1]."""

    prompt: PromptInput
    scored: tuple[int, ...]  # the shared teacher-forced sequence: prompt + reference continuation
    positions: tuple[int, ...]
    generated: dict[str, tuple[int, ...]]  # side -> greedy continuation token ids
    logits_files: dict[str, Path]  # side -> .npy [len(positions) x vocab] float32

    def logits(self, side: str) -> np.ndarray:
        return np.load(self.logits_files[side], mmap_mode="r")

    @property
    def continuation_rows(self) -> np.ndarray:
        """Indices into `positions` of the rows predicting the reference continuation, in order."""
        return np.flatnonzero(np.asarray(self.positions) >= len(self.prompt.token_ids) - 1)


@dataclass
class ModelCapture:
    model: str
    prompts: list[PromptCapture]
    meta: dict[str, Any] = field(default_factory=dict)  # versions, platform, engine settings, timings
    folder: Path | None = None

    def __iter__(self) -> Iterator[PromptCapture]:
        return iter(self.prompts)


class CaptureWriter:
    """Builds a capture folder in a temporary sibling and moves it into place only when complete."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))

    def logits_path(self, side: str, index: int) -> Path:
        return self.tmp / f"{side}-{index:03d}.npy"

    def finish(self, capture: ModelCapture) -> ModelCapture:
        doc = {
            "format": FORMAT_VERSION,
            "model": capture.model,
            "meta": capture.meta,
            "prompts": [
                {
                    "prompt": asdict(p.prompt),
                    "scored": list(p.scored),
                    "positions": list(p.positions),
                    "generated": {s: list(t) for s, t in p.generated.items()},
                }
                for p in capture.prompts
            ],
        }
        (self.tmp / "capture.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        if self.folder.exists():
            shutil.rmtree(self.folder)
        os.replace(self.tmp, self.folder)
        return load_capture(self.folder)

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def load_capture(folder: Path) -> ModelCapture:
    folder = Path(folder)
    doc = json.loads((folder / "capture.json").read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder}/capture.json: format {doc.get('format')!r}; expected {FORMAT_VERSION}")
    prompts = []
    for entry in doc["prompts"]:
        p = entry["prompt"]
        prompt = PromptInput(index=p["index"], id=p["id"], label=p["label"], token_ids=tuple(p["token_ids"]))
        prompts.append(PromptCapture(
            prompt=prompt,
            scored=tuple(entry["scored"]),
            positions=tuple(entry["positions"]),
            generated={s: tuple(t) for s, t in entry["generated"].items()},
            logits_files={s: folder / f"{s}-{prompt.index:03d}.npy" for s in SIDES},
        ))
    return ModelCapture(model=doc["model"], prompts=prompts, meta=doc["meta"], folder=folder)
