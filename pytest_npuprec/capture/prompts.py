"""Config prompts -> token ids, once, in the main process: both runners get the same ids."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.schema import ModelConfig, Prompt
from .records import PromptInput


class PromptError(ValueError):
    pass


def load_tokenizer(model_path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)


def render_prompts(config: ModelConfig, tokenizer: Any) -> list[PromptInput]:
    assert config.precision is not None
    out = []
    for index, prompt in enumerate(config.precision.prompts):
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
        out.append(PromptInput(index=index, id=prompt.id, label=prompt.label, token_ids=tuple(ids)))
    return out


def _token_ids(config: ModelConfig, prompt: Prompt, tokenizer: Any) -> list[int]:
    assert config.precision is not None
    if prompt.text is not None and not config.precision.chat_template:
        return list(tokenizer(prompt.text, add_special_tokens=True)["input_ids"])
    messages = ([{"role": "user", "content": prompt.text}] if prompt.text is not None
                else [{"role": m.role, "content": m.content} for m in prompt.messages or ()])
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
