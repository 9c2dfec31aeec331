"""Config prompts -> token ids, once, in the main process: both runners get the same ids."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import ModelConfig, Prompt
from ..errors import NpuprecError
from . import audio, multimodal
from .lengths import length_prompts
from .records import ModelCapture, PromptInput


class PromptError(NpuprecError, ValueError):
    pass


def load_tokenizer(model_path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)


def render_prompts(config: ModelConfig, tokenizer: Any, model_path: Path | None = None) -> list[PromptInput]:
    """Token ids of every prompt; prompts with images or sounds are expanded by the model's processor (multimodal.py)."""
    assert config.precision is not None
    out = []
    processor, token_ids = None, {}
    if any(p.all_images or p.all_audios for p in config.precision.prompts):
        assert model_path is not None, "image and audio prompts need the checkpoint's processor"
        multimodal.check_images_allowed(config, model_path)
        audio.check_audio_allowed(config, model_path)
        processor = multimodal.load_processor(model_path, config.serve.trust_remote_code)
        token_ids = multimodal.media_token_ids(model_path)
    for index, prompt in enumerate(config.precision.prompts):
        images, media = (), ()
        if prompt.all_images or prompt.all_audios:
            ids, images, media = multimodal.render_media_prompt(config, prompt, processor, token_ids)
        else:
            ids = _token_ids(config, prompt, tokenizer)
        if not ids:
            raise PromptError(f"{config.path}: precision.prompts[{index}] (id {prompt.id!r}): "
                              "tokenizes to no tokens; expected some text")
        needed = len(ids) + config.precision.max_tokens
        if needed > config.serve.max_model_len:
            raise PromptError(
                f"{config.path}: precision.prompts[{index}] (id {prompt.id!r}): {len(ids)} prompt tokens + "
                f"max_tokens {config.precision.max_tokens} = {needed} exceeds serve.max_model_len "
                f"{config.serve.max_model_len}")
        out.append(PromptInput(index=index, id=prompt.id, label=prompt.label, token_ids=tuple(ids), images=images,
                               media_positions=media))
    return out + length_prompts(config, tokenizer, len(out))


def _token_ids(config: ModelConfig, prompt: Prompt, tokenizer: Any) -> list[int]:
    assert config.precision is not None
    if prompt.text is not None and not config.precision.chat_template:
        return list(tokenizer(prompt.text, add_special_tokens=True)["input_ids"])
    messages = ([{"role": "user", "content": prompt.text}] if prompt.text is not None
                else [{"role": m.role, "content": m.template_content()} for m in prompt.messages or ()])
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(f"{config.path}: prompt {prompt.id!r} needs the model's chat template, but the "
                          f"tokenizer of {config.model_name} has none; expected a chat_template in "
                          "tokenizer_config.json (or use plain-text prompts)")
    kwargs = {}
    if config.serve.enable_thinking is not None:
        kwargs["enable_thinking"] = config.serve.enable_thinking
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode_token(tokenizer: Any, token_id: int | None) -> str:
    if token_id is None:
        return ""
    return tokenizer.decode([token_id])


def perplexity_input(config: ModelConfig, tokenizer: Any, index: int) -> PromptInput:
    """The perplexity check's fixed text, tokenized like a plain-text prompt."""
    assert config.precision is not None and config.precision.checks.perplexity is not None
    text = config.precision.checks.perplexity.text
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if len(ids) < 2:
        raise PromptError(f"{config.path}: precision.checks.perplexity.text: {len(ids)} token(s); expected at "
                          "least 2 (perplexity is over the tokens after the first)")
    if len(ids) > config.serve.max_model_len:
        raise PromptError(f"{config.path}: precision.checks.perplexity.text: {len(ids)} tokens exceed "
                          f"serve.max_model_len {config.serve.max_model_len}")
    return PromptInput(index=index, id="perplexity", label=text, token_ids=tuple(ids), kind="perplexity")


@dataclass(frozen=True)
class PromptText:
    """Decoded text of one prompt and of each side's greedy continuation."""

    index: int
    id: str
    label: str
    is_chat: bool
    prompt: str
    outputs: dict[str, str]  # side -> decoded greedy continuation


def decode_texts(config: ModelConfig, capture: ModelCapture, tokenizer: Any) -> list[PromptText]:
    """Decoded prompt and greedy continuations of every compared prompt (special tokens kept: the
    checks look for tags such as <think>)."""
    assert config.precision is not None
    by_id = {p.id: p for p in config.precision.prompts}
    decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    return [
        PromptText(index=r.prompt.index, id=r.prompt.id, label=r.prompt.label,
                   is_chat=(r.prompt.id in by_id and by_id[r.prompt.id].messages is not None) or config.precision.chat_template,
                   prompt=decode(r.prompt.token_ids),
                   outputs={side: decode(tokens) for side, tokens in r.generated.items()})
        for r in capture.compared()
    ]
