"""Prompts with sounds: the clips themselves and what the checkpoint says about audio (its placeholder id,
its feature extractor's sample rate and window). capture/multimodal.py renders the prompt with them; each
side's feature extractor turns a clip into mel features (runners/vllm_media.py, runners/reference_media.py)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config.schema import AudioSource, ModelConfig, Prompt


@dataclass(frozen=True, eq=False)
class AudioClip:
    """One sound of a prompt: float32 mono samples in [-1, 1] at sample_rate Hz."""

    samples: np.ndarray
    sample_rate: int

    def digest(self) -> str:
        """sha256 of the sample rate and the samples."""
        return hashlib.sha256(f"{self.sample_rate}".encode() + self.samples.astype(np.float32).tobytes()).hexdigest()


def audio_token_id(model_path: Path) -> int | None:
    """The checkpoint's audio placeholder id (config.json audio_token_index / audio_token_id); None for a model
    that takes no sound."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if "audio_config" not in cfg:
        return None
    value = cfg.get("audio_token_index", cfg.get("audio_token_id"))
    return int(value) if isinstance(value, int) else None


def load_audio(source: AudioSource) -> AudioClip:
    if source.path is not None:
        from ..config.audios import read_wav

        samples, rate = read_wav(source.path)
        return AudioClip(samples, rate)
    from ..standins.synthetic_audio import synthetic_waveform

    assert source.synthetic is not None
    return AudioClip(synthetic_waveform(source.synthetic, source.seconds, source.sample_rate, source.seed),
                     source.sample_rate)


def check_audio_allowed(config: ModelConfig, model_path: Path) -> None:
    """A sound for a model that takes none is a config error naming the prompt and its key."""
    if audio_token_id(model_path) is not None:
        return
    assert config.precision is not None
    for prompt in config.precision.prompts:
        if prompt.all_audios:
            from ..config.reader import ConfigError

            raise ConfigError(config.path, prompt.all_audios[0].key,
                              f"(prompt {prompt.id!r}) a sound for {config.model_name}, whose checkpoint "
                              f"({model_path}/config.json) takes no audio (no audio_config / audio_token_index); "
                              "expected an audio-language model or a prompt without sounds")


def check_clips_fit(config: ModelConfig, prompt: Prompt, clips: tuple[AudioClip, ...], processor: Any) -> None:
    """Each clip at the feature extractor's sample rate (a resampler would be one more difference between the
    sides) and within its window (a longer clip would be cut off, silently, on both sides)."""
    from ..config.reader import ConfigError

    extractor = getattr(processor, "feature_extractor", None)
    rate = getattr(extractor, "sampling_rate", None)
    window = getattr(extractor, "chunk_length", None)
    for source, clip in zip(prompt.all_audios, clips):
        seconds = len(clip.samples) / clip.sample_rate
        if rate is not None and clip.sample_rate != rate:
            raise ConfigError(config.path, source.key,
                              f"(prompt {prompt.id!r}) {source.label}: {clip.sample_rate} Hz; {config.model_name}'s "
                              f"feature extractor takes {rate} Hz (resample the file, or set sample_rate: {rate})")
        if window is not None and seconds > window:
            raise ConfigError(config.path, source.key,
                              f"(prompt {prompt.id!r}) {source.label}: {seconds:.2f} s, longer than "
                              f"{config.model_name}'s audio window of {window} s (the rest would be cut off); "
                              "expected a shorter sound")
