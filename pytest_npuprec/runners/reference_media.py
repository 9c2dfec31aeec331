"""The reference's side of image prompts: the model's transformers processor turns each sequence's images into
the model's inputs (pixel_values, image_grid_thw, ...); the token ids already hold the expanded placeholders
(capture/multimodal.py made them with the same processor)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

from ..capture.multimodal import image_token_id


def is_vision_language(model_path: Path) -> bool:
    return image_token_id(model_path) is not None


def load_model_and_processor(model_path: Path, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText

    from ..capture.multimodal import load_processor

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=dtype,
                                                        trust_remote_code=trust_remote_code).eval()
    return model, load_processor(model_path, trust_remote_code)


def vision_inputs(model: Any, processor: Any, ids: Any, images: Sequence[Any]) -> dict[str, Any]:
    """Keyword arguments for the model's forward / generate beside `ids` (a [1 x n] tensor): none without images.
    Models that take `mm_token_type_ids` (Qwen3-VL's M-RoPE needs it) get 1 at each image placeholder."""
    if processor is None or not images:
        return {}
    out = dict(processor.image_processor(images=list(images), return_tensors="pt"))
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        out["mm_token_type_ids"] = (ids == processor.image_token_id).long()
    return out
