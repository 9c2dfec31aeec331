"""Seeded synthetic images, so configs (and the VL stand-in's training set) need no binary files.

Patterns:
  shapes    1-3 filled shapes of one colour and one kind on a dark background (what the VL stand-in
            learns to describe: colour, kind, count); `shapes_scene(seed)` says which
  noise     uniform RGB noise
  gradient  a smooth two-colour gradient whose colours and direction depend on the seed
The same (pattern, size, seed) gives the same pixels on every machine: numpy's PCG64 and integer
drawing only, no font or anti-aliasing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PATTERNS = ("shapes", "noise", "gradient")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
KINDS = ("square", "circle", "cross")
COUNT_WORDS = ("One", "Two", "Three")
_BACKGROUND = (24, 24, 28)


@dataclass(frozen=True)
class Scene:
    """What a `shapes` image shows."""

    colour: str
    kind: str
    count: int

    def caption(self) -> str:
        plural = "es" if self.kind == "cross" else "s"
        return f"{COUNT_WORDS[self.count - 1]} {self.colour} {self.kind}{plural if self.count > 1 else ''}."


def shapes_scene(seed: int) -> Scene:
    rng = np.random.default_rng([seed, 1])
    return Scene(colour=list(COLOURS)[int(rng.integers(len(COLOURS)))], kind=KINDS[int(rng.integers(len(KINDS)))],
                 count=int(rng.integers(1, 4)))


def synthetic_pixels(pattern: str, size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 [height x width x 3] for `pattern` at size (width, height)."""
    width, height = size
    if pattern == "shapes":
        return _shapes(shapes_scene(seed), width, height, np.random.default_rng([seed, 2]))
    rng = np.random.default_rng([seed, 3])
    if pattern == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if pattern == "gradient":
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:height, 0:width]
        t = (np.cos(angle) * x / max(1, width - 1) + np.sin(angle) * y / max(1, height - 1))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
        return np.round(a + (b - a) * t[..., None]).astype(np.uint8)
    raise ValueError(f"unknown synthetic pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")


def synthetic_image(pattern: str, size: tuple[int, int], seed: int) -> Any:
    """The pattern as an RGB PIL image (what both sides' processors take)."""
    from PIL import Image

    return Image.fromarray(synthetic_pixels(pattern, size, seed), mode="RGB")


def _shapes(scene: Scene, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = _BACKGROUND
    cells = _cells(scene.count, width, height, rng)
    radius = max(3, min(width, height) // 7)
    y, x = np.mgrid[0:height, 0:width]
    for cx, cy in cells:
        dx, dy = np.abs(x - cx), np.abs(y - cy)
        if scene.kind == "square":
            mask = (dx <= radius) & (dy <= radius)
        elif scene.kind == "circle":
            mask = dx ** 2 + dy ** 2 <= radius ** 2
        else:
            arm = max(1, radius // 3)
            mask = ((dx <= arm) & (dy <= radius)) | ((dy <= arm) & (dx <= radius))
        img[mask] = COLOURS[scene.colour]
    return img


def _cells(count: int, width: int, height: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Centres of `count` shapes in distinct cells of a 3 x 3 grid, jittered: shapes never overlap."""
    picks = rng.permutation(9)[:count]
    cw, ch = width / 3, height / 3
    jitter = rng.uniform(-0.12, 0.12, (count, 2))
    return [(int((p % 3 + 0.5 + jx) * cw), int((p // 3 + 0.5 + jy) * ch)) for p, (jx, jy) in zip(picks, jitter)]
