"""Audio-language device faults: the audio side of a port wrong the way vllm-ascend's vision side was (issue 20:
the tower on another kernel path). Each hooks vLLM's `model.audio_tower` (the Whisper-style encoder before the
projector); a model without an audio tower refuses them."""
from __future__ import annotations

from typing import Any


def audio_mask(model: Any, _: float) -> str:
    """The audio encoder's attention mask dropped: every mel frame attends to the padding the feature extractor
    added up to its window (a kernel path that takes no mask), so a clip shorter than the window is heard with
    silence mixed in."""
    tower = getattr(model, "audio_tower", None)
    if tower is None:
        raise RuntimeError("audio_mask fault: the model has no audio tower (`model.audio_tower`); it applies to "
                           "audio-language models only")

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
        if "attention_mask" in kwargs:
            return args, dict(kwargs, attention_mask=None)
        return args[:1], kwargs  # (input_features, attention_mask) given by position

    tower.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return "audio encoder attention mask dropped (padding frames attended)"


FAULTS = {"audio_mask": audio_mask}
