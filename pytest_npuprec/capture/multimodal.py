"""Prompts with images or sounds -> token ids with the placeholders expanded, in the main process, by the
model's own (transformers) processor: the reference runs exactly these ids; the device gets one placeholder per
image or sound and its own processor expands it (runners/vllm_media.py proves the two expansions are the same
ids). Sounds: capture/audio.py."""
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


def media_token_ids(model_path: Path) -> dict[str, int]:
    """modality -> the checkpoint's placeholder id, for each modality it takes (none for a text-only model)."""
    from .audio import audio_token_id

    ids = {"image": image_token_id(model_path), "audio": audio_token_id(model_path)}
    return {modality: token for modality, token in ids.items() if token is not None}


def render_media_prompt(config: ModelConfig, prompt: Prompt, processor: Any, token_ids: dict[str, int]
                        ) -> tuple[list[int], tuple[Any, ...], tuple[int, ...]]:
    """(expanded token ids, media items: images (PIL) then sounds (AudioClip), positions of the placeholders)."""
    from .audio import check_clips_fit, load_audio

    messages = ([{"role": "user", "content": [*({"type": "audio"} for _ in prompt.audios),
                                               *({"type": "image"} for _ in prompt.images),
                                               {"type": "text", "text": prompt.text}]}]
                if prompt.text is not None
                else [{"role": m.role, "content": m.template_content()} for m in prompt.messages or ()])
    kwargs: dict[str, Any] = {}
    if config.serve.enable_thinking is not None:
        kwargs["enable_thinking"] = config.serve.enable_thinking
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    images = tuple(load_image(source) for source in prompt.all_images)
    clips = tuple(load_audio(source) for source in prompt.all_audios)
    check_clips_fit(config, prompt, clips, processor)
    media: dict[str, Any] = {"images": list(images)} if images else {}
    if clips:
        media.update(audio=[c.samples for c in clips], sampling_rate=clips[0].sample_rate)
    encoded = processor(text=[text], return_tensors="np", **media)
    ids = [int(i) for i in encoded["input_ids"][0]]
    for modality, items in (("image", images), ("audio", clips)):
        token = token_ids.get(modality)
        runs = sum(1 for i, t in enumerate(ids) if t == token and (i == 0 or ids[i - 1] != token))
        if runs != len(items):
            raise MediaError(f"{config.path}: prompt {prompt.id!r}: {len(items)} {modality} item(s) but the chat "
                             f"template of {config.model_name} placed {runs} {modality} placeholder run(s); "
                             f"expected one per {modality}")
    positions = tuple(i for i, t in enumerate(ids) if t in token_ids.values())
    return ids, (*images, *clips), positions


def text_positions(positions: tuple[int, ...], media_positions: tuple[int, ...]) -> tuple[int, ...]:
    """The compared positions without image placeholders: a row whose input token is a placeholder, or that
    predicts one, compares no text."""
    media = set(media_positions)
    return tuple(p for p in positions if p not in media and p + 1 not in media)
