"""The reference's side of image and audio prompts: the model's transformers processor turns each sequence's
images into the model's inputs (pixel_values, image_grid_thw, ...) and its sounds into mel features
(input_features, feature_attention_mask); the token ids already hold the expanded placeholders
(capture/multimodal.py made them with the same processor)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

from ..capture.multimodal import image_token_id, media_token_ids


def is_multimodal(model_path: Path) -> bool:
    """A checkpoint that takes images or sounds (loaded with its processor)."""
    return bool(media_token_ids(model_path))


def load_model_and_processor(model_path: Path, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoModelForMultimodalLM

    from ..capture.multimodal import load_processor

    auto = AutoModelForImageTextToText if image_token_id(model_path) is not None else AutoModelForMultimodalLM
    model = auto.from_pretrained(str(model_path), dtype=dtype, trust_remote_code=trust_remote_code).eval()
    return model, load_processor(model_path, trust_remote_code)


def media_inputs(model: Any, processor: Any, ids: Any, media: Sequence[Any]) -> dict[str, Any]:
    """Keyword arguments for the model's forward / generate beside `ids` (a [1 x n] tensor): none without media.
    Models that take `mm_token_type_ids` (Qwen3-VL's M-RoPE needs it) get 1 at each image placeholder. Sounds
    as the processor makes them: padded to the feature extractor's window, with the mask of the real frames."""
    if processor is None or not media:
        return {}
    images = [item for item in media if not hasattr(item, "sample_rate")]
    clips = [item for item in media if hasattr(item, "sample_rate")]
    out: dict[str, Any] = {}
    if images:
        out.update(processor.image_processor(images=images, return_tensors="pt"))
        if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
            out["mm_token_type_ids"] = (ids == processor.image_token_id).long()
    if clips:
        features = processor.feature_extractor([c.samples for c in clips], sampling_rate=clips[0].sample_rate,
                                               return_attention_mask=True, padding="max_length", return_tensors="pt")
        out.update(input_features=features["input_features"], feature_attention_mask=features["attention_mask"])
    return out
