"""The layer-by-layer rerun of one prompt (pytest_npuprec/diagnose.py): each side scores the prompt's teacher-forced
sequence at its scored positions with the layers tap (runners/worker_taps/layers.py, runners/reference_taps/
layers.py), one runner at a time, never two resident at once. The folder is published whole or not at all."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..atomic import staged_dir
from ..runners.scoring import ScoreRequest
from .session import RunnerFactory

TAP = "layers"


@dataclass(frozen=True)
class LayerCapture:
    folder: Path
    layers: dict[str, Path]  # side -> .npz of the layers tap
    logits: dict[str, Path]  # side -> .npy [positions x vocab] of the same pass
    info: dict[str, dict[str, Any]]  # side -> the runner's info
    seconds: dict[str, float]  # side -> wall time of its start and scoring


def capture_layers(tokens: Sequence[int], positions: Sequence[int], runners: Mapping[str, RunnerFactory],
                   folder: Path, images: tuple[Any, ...] = ()) -> LayerCapture:
    """Score `tokens` (with the prompt's `images`) at `positions` on every side (name -> runner factory, run in
    that order)."""
    info, seconds = {}, {}
    with staged_dir(folder) as tmp:
        for side, factory in runners.items():
            started = time.perf_counter()
            with factory() as runner:
                runner.score([ScoreRequest(tokens, positions, tmp / f"{side}.npy", {TAP: tmp / f"{side}.{TAP}.npz"},
                                            images)])
                info[side] = runner.info
            seconds[side] = round(time.perf_counter() - started, 2)
    folder = Path(folder)
    return LayerCapture(folder, {s: folder / f"{s}.{TAP}.npz" for s in runners},
                        {s: folder / f"{s}.npy" for s in runners}, info, seconds)
