"""Seeded synthetic sounds, so configs (and the audio stand-in's training set) need no binary files.

Kinds:
  tone   a sine at one frequency
  chirp  a sine sweeping linearly across its pitch band (up or down, by the seed)
  noise  white noise, low-passed (a moving average) for a low sound, differenced for a high one
Each sound is low (200-400 Hz) or high (1.5-3 kHz), quiet (RMS 0.04) or loud (RMS 0.35), drawn from the seed
(`sound_scene(kind, seed)` says which): what the audio stand-in learns to describe. The same (kind, seconds,
sample_rate, seed) gives the same samples on every machine: numpy's PCG64 and float64 arithmetic only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOUNDS = ("tone", "chirp", "noise")
PITCHES = {"low": (200.0, 400.0), "high": (1500.0, 3000.0)}  # Hz band of each pitch
LOUDNESS = {"quiet": 0.04, "loud": 0.35}  # RMS of the waveform
MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Sound:
    """What a synthetic sound is."""

    kind: str
    pitch: str
    loudness: str

    def caption(self) -> str:
        noun = "noise" if self.kind == "noise" else self.kind
        return f"A {self.loudness} {self.pitch} {noun}."

    def kind_answer(self) -> str:
        return "Noise." if self.kind == "noise" else f"A {self.kind}."


def sound_scene(kind: str, seed: int) -> Sound:
    if kind not in SOUNDS:
        raise ValueError(f"unknown synthetic sound {kind!r}; expected one of {', '.join(SOUNDS)}")
    rng = np.random.default_rng([seed, 11])
    return Sound(kind=kind, pitch=list(PITCHES)[int(rng.integers(len(PITCHES)))],
                 loudness=list(LOUDNESS)[int(rng.integers(len(LOUDNESS)))])


def synthetic_waveform(kind: str, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """float32 mono samples in [-1, 1] of `kind`, `seconds` long at `sample_rate` Hz."""
    scene = sound_scene(kind, seed)
    n = max(1, int(round(seconds * sample_rate)))
    rng = np.random.default_rng([seed, 12])
    t = np.arange(n, dtype=np.float64) / sample_rate
    lo, hi = PITCHES[scene.pitch]
    if kind == "tone":
        wave = np.sin(2 * np.pi * rng.uniform(lo, hi) * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chirp":
        f0, f1 = (lo, hi) if rng.integers(2) else (hi, lo)
        duration = max(t[-1], 1.0 / sample_rate)
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * duration)) + rng.uniform(0, 2 * np.pi))
    else:
        white = rng.standard_normal(n + 64)
        if scene.pitch == "low":
            width = max(2, int(sample_rate / (2 * hi)))  # a box filter whose first null is near the band's top
            wave = np.convolve(white, np.ones(width) / width, mode="valid")[:n]
        else:
            wave = np.diff(white)[:n]
    wave = wave - wave.mean()
    rms = float(np.sqrt(np.mean(wave * wave))) or 1.0
    return np.clip(wave * (LOUDNESS[scene.loudness] / rms), -1.0, 1.0).astype(np.float32)
