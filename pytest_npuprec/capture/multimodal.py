"""Prompts with images -> token ids with the image placeholders expanded, in the main process, by the model's
own (transformers) processor: the reference runs exactly these ids; the device gets one placeholder per image
and its own processor expands it (runners/vllm_media.py proves the two expansions are the same ids)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config.schema import ImageSource, ModelConfig, Prompt
from ..errors import NpuprecError


class MediaError(NpuprecError, ValueError):
    pass


def image_token_id(model_path: Path) -> int | None:
    """The checkpoint's image placeholder id (config.json image_token_id / image_token_index); None for a
    model that takes no images."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if "vision_config" not in cfg:
        return None
    value = cfg.get("image_token_id", cfg.get("image_token_index"))
    return int(value) if isinstance(value, int) else None


def load_image(source: ImageSource) -> Any:
    """The image as an RGB PIL image."""
    if source.path is not None:
        from PIL import Image

        with Image.open(source.path) as im:
            return im.convert("RGB")
    from ..standins.synthetic import synthetic_image

    assert source.synthetic is not None and source.size is not None
    return synthetic_image(source.synthetic, source.size, source.seed)


def load_processor(model_path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)


def check_images_allowed(config: ModelConfig, model_path: Path) -> None:
    """An image prompt for a model that takes no images is a config error naming the prompt and its key."""
    if image_token_id(model_path) is not None:
        return
    assert config.precision is not None
    for index, prompt in enumerate(config.precision.prompts):
        if prompt.all_images:
            from ..config.reader import ConfigError

            raise ConfigError(config.path, prompt.all_images[0].key,
                              f"(prompt {prompt.id!r}) an image for {config.model_name}, whose checkpoint "
                              f"({model_path}/config.json) takes no images (no vision_config / image_token_id); "
                              "expected a vision-language model or a text-only prompt")


def render_image_prompt(config: ModelConfig, prompt: Prompt, processor: Any, token_id: int
                        ) -> tuple[list[int], tuple[Any, ...], tuple[int, ...]]:
    """(expanded token ids, images, positions of the image placeholder tokens)."""
    messages = ([{"role": "user", "content": [*({"type": "image"} for _ in prompt.images),
                                               {"type": "text", "text": prompt.text}]}]
                if prompt.text is not None
                else [{"role": m.role, "content": m.template_content()} for m in prompt.messages or ()])
    kwargs = {}
    if config.serve.enable_thinking is not None:
        kwargs["enable_thinking"] = config.serve.enable_thinking
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    images = tuple(load_image(source) for source in prompt.all_images)
    encoded = processor(text=[text], images=list(images), return_tensors="np")
    ids = [int(i) for i in encoded["input_ids"][0]]
    positions = tuple(i for i, t in enumerate(ids) if t == token_id)
    runs = sum(1 for i in positions if i - 1 not in positions)
    if runs != len(images):
        raise MediaError(f"{config.path}: prompt {prompt.id!r}: {len(images)} image(s) but the chat template of "
                         f"{config.model_name} placed {runs} image placeholder run(s); expected one per image")
    return ids, images, positions


def text_positions(positions: tuple[int, ...], media_positions: tuple[int, ...]) -> tuple[int, ...]:
    """The compared positions without image placeholders: a row whose input token is a placeholder, or that
    predicts one, compares no text."""
    media = set(media_positions)
    return tuple(p for p in positions if p not in media and p + 1 not in media)
