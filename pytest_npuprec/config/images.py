"""The images of a prompt in a config: `images: [path | {synthetic: <pattern>, size: [w, h], seed: n}]` beside
`text:`, or `{type: image, image: ...}` parts of a message's content list. Files are relative to the config's
folder and must open as images now (collection), so a broken path is one clear config error."""
from __future__ import annotations

from typing import Any

from ..standins.synthetic import PATTERNS
from .reader import Reader
from .schema import ContentPart, ImageSource

MAX_SYNTHETIC_SIDE = 4096


def parse_images(r: Reader, raw: Any, key: str, prompt_id: str) -> tuple[ImageSource, ...]:
    r.typed(raw, key, list)
    if not raw:
        raise r.fail(key, f"(prompt {prompt_id!r}) empty; expected at least one image, or no `images` key")
    return tuple(parse_image(r, item, f"{key}[{i}]", prompt_id) for i, item in enumerate(raw))


def parse_image(r: Reader, raw: Any, key: str, prompt_id: str) -> ImageSource:
    """A path (str) or a synthetic entry (mapping)."""
    if isinstance(raw, str):
        return _file(r, raw, key, prompt_id)
    if not isinstance(raw, dict):
        raise r.fail(key, f"(prompt {prompt_id!r}) expected an image path or {{synthetic: <pattern>, size: [w, h], "
                          f"seed: n}}, got {type(raw).__name__} {raw!r}")
    r.mapping(raw, key, frozenset({"synthetic", "size", "seed"}))
    if "synthetic" not in raw:
        raise r.fail(f"{key}.synthetic", f"(prompt {prompt_id!r}) missing; expected one of {', '.join(PATTERNS)}")
    if raw["synthetic"] not in PATTERNS:
        raise r.fail(f"{key}.synthetic", f"(prompt {prompt_id!r}) unknown pattern {raw['synthetic']!r}; expected one "
                                         f"of {', '.join(PATTERNS)}")
    size = raw.get("size")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SYNTHETIC_SIDE for v in size)):
        raise r.fail(f"{key}.size", f"(prompt {prompt_id!r}) expected [width, height] in pixels, each 1..."
                                    f"{MAX_SYNTHETIC_SIDE}, got {size!r}")
    seed = r.typed(raw.get("seed", 0), f"{key}.seed", int)
    return ImageSource(key=key, synthetic=raw["synthetic"], size=(size[0], size[1]), seed=seed)


def _file(r: Reader, raw: str, key: str, prompt_id: str) -> ImageSource:
    if not raw.strip():
        raise r.fail(key, f"(prompt {prompt_id!r}) empty image path; expected a file relative to {r.path.parent}")
    path = (r.path.parent / raw).resolve()
    if not path.is_file():
        raise r.fail(key, f"(prompt {prompt_id!r}) image file {path} not found; expected a file relative to the "
                          f"config's folder {r.path.parent}")
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()  # reads the whole file; a truncated or non-image file fails here
    except Exception as exc:
        raise r.fail(key, f"(prompt {prompt_id!r}) {path} is not a readable image ({type(exc).__name__}: {exc}); "
                          "expected a PNG or JPEG") from None
    return ImageSource(key=key, path=path)


PART_TYPES = ("text", "image", "audio")


def parse_content(r: Reader, raw: Any, key: str, prompt_id: str) -> str | tuple[ContentPart, ...]:
    """A message's content: a string, or a list of {type: text, text} / {type: image, image} / {type: audio,
    audio} parts."""
    from .audios import parse_audio

    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list) or not raw:
        raise r.fail(key, f"(prompt {prompt_id!r}) expected a string or a non-empty list of {{type: text, text: ...}} "
                          f"/ {{type: image, image: ...}} / {{type: audio, audio: ...}} parts, got {raw!r}")
    parts = []
    for i, part in enumerate(raw):
        pkey = f"{key}[{i}]"
        r.mapping(part, pkey, frozenset({"type", *PART_TYPES}))
        kind = r.choice(part.get("type"), f"{pkey}.type", PART_TYPES)
        others = [t for t in PART_TYPES if t != kind and t in part]
        if kind not in part or others:
            raise r.fail(pkey, f"(prompt {prompt_id!r}) a `type: {kind}` part holds `{kind}:` (and no "
                               f"`{(others or [t for t in PART_TYPES if t != kind])[0]}:`)")
        if kind == "text":
            parts.append(ContentPart("text", text=r.typed(part["text"], f"{pkey}.text", str)))
        elif kind == "image":
            parts.append(ContentPart("image", image=parse_image(r, part["image"], f"{pkey}.image", prompt_id)))
        else:
            parts.append(ContentPart("audio", audio=parse_audio(r, part["audio"], f"{pkey}.audio", prompt_id)))
    return tuple(parts)


def check_image_limit(r: Reader, prompts: tuple, extra: dict[str, Any]) -> None:
    """serve.limit_mm_per_prompt.image / .audio (the engine's per-prompt limits), when set, bound every prompt."""
    limits = extra.get("limit_mm_per_prompt")
    for modality, noun in (("image", "images"), ("audio", "sounds")):
        limit = limits.get(modality) if isinstance(limits, dict) else None
        if limit is None:
            continue
        for prompt in prompts:
            n = len(prompt.all_images if modality == "image" else prompt.all_audios)
            if n > limit:
                raise r.fail("precision.prompts", f"prompt {prompt.id!r} has {n} {noun}, more than the model's "
                                                  f"limit serve.limit_mm_per_prompt.{modality} = {limit}")
