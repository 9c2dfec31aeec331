"""The sounds of a prompt in a config: `audios: [path | {synthetic: tone|chirp|noise, seconds: s, sample_rate: hz,
seed: n}]` beside `text:`, or `{type: audio, audio: ...}` parts of a message's content list (config/images.py
parses the parts). Files are WAV (PCM) relative to the config's folder and must read now (collection), so a
broken path is one clear config error."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..standins.synthetic_audio import MAX_SECONDS, SOUNDS
from .reader import Reader
from .schema import AudioSource

SAMPLE_RATES = (8000, 48000)  # the range a synthetic sound may ask for


def parse_audios(r: Reader, raw: Any, key: str, prompt_id: str) -> tuple[AudioSource, ...]:
    r.typed(raw, key, list)
    if not raw:
        raise r.fail(key, f"(prompt {prompt_id!r}) empty; expected at least one sound, or no `audios` key")
    return tuple(parse_audio(r, item, f"{key}[{i}]", prompt_id) for i, item in enumerate(raw))


def parse_audio(r: Reader, raw: Any, key: str, prompt_id: str) -> AudioSource:
    """A WAV path (str) or a synthetic entry (mapping)."""
    if isinstance(raw, str):
        return _file(r, raw, key, prompt_id)
    if not isinstance(raw, dict):
        raise r.fail(key, f"(prompt {prompt_id!r}) expected a WAV path or {{synthetic: <kind>, seconds: s, "
                          f"sample_rate: hz, seed: n}}, got {type(raw).__name__} {raw!r}")
    r.mapping(raw, key, frozenset({"synthetic", "seconds", "sample_rate", "seed"}))
    if raw.get("synthetic") not in SOUNDS:
        what = "missing" if "synthetic" not in raw else f"unknown sound {raw['synthetic']!r}"
        raise r.fail(f"{key}.synthetic", f"(prompt {prompt_id!r}) {what}; expected one of {', '.join(SOUNDS)}")
    seconds = r.typed(raw.get("seconds", 1.0), f"{key}.seconds", float, int)
    if not 0 < seconds <= MAX_SECONDS:
        raise r.fail(f"{key}.seconds", f"(prompt {prompt_id!r}) expected a length in seconds, > 0 and <= "
                                       f"{MAX_SECONDS:g}, got {seconds!r}")
    rate = r.typed(raw.get("sample_rate", 16000), f"{key}.sample_rate", int)
    if not SAMPLE_RATES[0] <= rate <= SAMPLE_RATES[1]:
        raise r.fail(f"{key}.sample_rate", f"(prompt {prompt_id!r}) expected Hz in {SAMPLE_RATES[0]}..."
                                           f"{SAMPLE_RATES[1]}, got {rate!r}")
    seed = r.typed(raw.get("seed", 0), f"{key}.seed", int)
    return AudioSource(key=key, synthetic=raw["synthetic"], seconds=float(seconds), sample_rate=rate, seed=seed)


def _file(r: Reader, raw: str, key: str, prompt_id: str) -> AudioSource:
    if not raw.strip():
        raise r.fail(key, f"(prompt {prompt_id!r}) empty audio path; expected a WAV file relative to {r.path.parent}")
    path = (r.path.parent / raw).resolve()
    if not path.is_file():
        raise r.fail(key, f"(prompt {prompt_id!r}) audio file {path} not found; expected a WAV file relative to "
                          f"the config's folder {r.path.parent}")
    try:
        read_wav(path)
    except Exception as exc:
        raise r.fail(key, f"(prompt {prompt_id!r}) {path} is not a readable sound ({type(exc).__name__}: {exc}); "
                          "expected a PCM WAV file (8, 16 or 32-bit integer samples)") from None
    return AudioSource(key=key, path=path)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(float32 mono samples in [-1, 1], sample rate) of a PCM WAV file; channels are averaged."""
    import wave

    with wave.open(str(path), "rb") as f:
        width, channels, rate, n = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.getnframes()
        frames = f.readframes(n)
    if width not in (1, 2, 4):
        raise ValueError(f"{8 * width}-bit samples")
    if n == 0 or len(frames) < n * width * channels:
        raise ValueError(f"{n} frames declared, {len(frames) // max(1, width * channels)} present")
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        kind = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(frames, kind).astype(np.float32) / float(np.iinfo(kind).max + 1)
    return samples.reshape(n, channels).mean(axis=1).astype(np.float32), rate
