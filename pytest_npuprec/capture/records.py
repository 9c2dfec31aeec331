"""What a capture holds: per prompt, both sides' greedy tokens and logits as arrays, savable.

Logits live in one float32 .npy file per (side, prompt) inside the capture folder and are
memory-mapped on load, so comparing many prompts does not hold them all in memory.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..atomic import publish_dir, temp_sibling

FORMAT_VERSION = 2
PromptKind = Literal["compare", "perplexity"]


def repeat_side(run: int) -> str:
    """The side name of the device's run number `run` (1-based; run 1 is plain "device")."""
    return "device" if run == 1 else f"device-run{run}"


@dataclass(frozen=True)
class PromptInput:
    index: int
    id: str
    label: str  # short text for tables
    token_ids: tuple[int, ...]
    # compare: generate, then score the continuation; perplexity: a fixed text scored at every position
    kind: PromptKind = "compare"


@dataclass
class PromptCapture:
    """One prompt, both sides. Row k of each logits array predicts scored[positions[k] + 1]."""

    prompt: PromptInput
    scored: tuple[int, ...]  # the shared teacher-forced sequence: prompt + reference continuation
    positions: tuple[int, ...]
    generated: dict[str, tuple[int, ...]]  # side -> greedy continuation token ids (repeat runs too)
    logits_files: dict[str, Path]  # side -> .npy [len(positions) x vocab] float32
    # tap (e.g. "routing") -> side -> .npz of that tap's arrays at `positions` (TAPS.md)
    tap_files: dict[str, dict[str, Path]] = field(default_factory=dict)

    def logits(self, side: str) -> np.ndarray:
        return np.load(self.logits_files[side], mmap_mode="r")

    def tap(self, name: str, side: str) -> dict[str, np.ndarray]:
        with np.load(self.tap_files[name][side]) as arrays:
            return {key: arrays[key] for key in arrays.files}

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

    def compared(self) -> list[PromptCapture]:
        """The prompts compared by the metric thresholds and the check kinds (not the perplexity text)."""
        return self._of_kind("compare")

    def perplexity(self) -> list[PromptCapture]:
        """The fixed text of the perplexity check, scored at every position (none without that check)."""
        return self._of_kind("perplexity")

    def _of_kind(self, kind: PromptKind) -> list[PromptCapture]:
        return [p for p in self.prompts if p.prompt.kind == kind]

    @property
    def device_runs(self) -> int:
        return int(self.meta.get("device_runs", 1))


class CaptureWriter:
    """Builds a capture folder in a temporary sibling and moves it into place only when complete."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.tmp = temp_sibling(self.folder)

    def logits_path(self, side: str, index: int) -> Path:
        return self.tmp / f"{side}-{index:03d}.npy"

    def tap_path(self, side: str, tap: str, index: int) -> Path:
        return self.tmp / f"{side}-{index:03d}.{tap}.npz"

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
                    "sides": self._sides(p.prompt.index),
                    "taps": self._taps(p.prompt.index),
                }
                for p in capture.prompts
            ],
        }
        (self.tmp / "capture.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        publish_dir(self.tmp, self.folder)
        return load_capture(self.folder)

    def _sides(self, index: int) -> list[str]:
        suffix = f"-{index:03d}.npy"
        return sorted(f.name[: -len(suffix)] for f in self.tmp.glob(f"*{suffix}"))

    def _taps(self, index: int) -> dict[str, list[str]]:
        taps: dict[str, list[str]] = {}
        for f in sorted(self.tmp.glob(f"*-{index:03d}.*.npz")):
            side_index, tap = f.name[: -len(".npz")].rsplit(".", 1)
            taps.setdefault(tap, []).append(side_index[: -len(f"-{index:03d}")])
        return taps

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
        prompt = PromptInput(index=p["index"], id=p["id"], label=p["label"], token_ids=tuple(p["token_ids"]),
                             kind=p["kind"])
        prompts.append(PromptCapture(
            prompt=prompt,
            scored=tuple(entry["scored"]),
            positions=tuple(entry["positions"]),
            generated={s: tuple(t) for s, t in entry["generated"].items()},
            logits_files={s: folder / f"{s}-{prompt.index:03d}.npy" for s in entry["sides"]},
            tap_files={tap: {s: folder / f"{s}-{prompt.index:03d}.{tap}.npz" for s in sides}
                       for tap, sides in entry.get("taps", {}).items()},
        ))
    return ModelCapture(model=doc["model"], prompts=prompts, meta=doc["meta"], folder=folder)
