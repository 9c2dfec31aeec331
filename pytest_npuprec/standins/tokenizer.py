"""Byte-level BPE tokenizer trained locally on the bundled corpus.

Produces the files a Hugging Face checkpoint folder needs for
``AutoTokenizer.from_pretrained`` (and therefore vLLM): ``tokenizer.json``,
``tokenizer_config.json`` (with a ChatML ``chat_template``) and
``special_tokens_map.json``.  There is no BOS token and nothing is added
around encoded text, so the same token ids reach the reference and the
device under test.
"""

from __future__ import annotations

import json
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)  # ids 0, 1, 2

# ChatML: <|im_start|>{role}\n{content}<|im_end|>\n per message, then
# <|im_start|>assistant\n when add_generation_prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Python twin of CHAT_TEMPLATE (used to build training text without jinja)."""
    out = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return out + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def train_tokenizer(texts: list[str], vocab_size: int, added_tokens: tuple[str, ...] = ()):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts``.

    The trainer is deterministic for a given input (ties between equally
    frequent pairs are broken by the pair itself), which the build relies
    on for a reproducible checkpoint hash.

    ``added_tokens`` (e.g. ``<think>``) get the ids right after
    SPECIAL_TOKENS and always encode to a single id, but are not special:
    decoding keeps them (``skip_special_tokens`` does not drop them), as
    Qwen3 does for its thinking tags.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[*SPECIAL_TOKENS, *added_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if added_tokens:
        tok = _unmark_special(tok, added_tokens)
    for i, t in enumerate((*SPECIAL_TOKENS, *added_tokens)):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def _unmark_special(tok, contents: tuple[str, ...]):
    """The trainer registers every reserved token as special; clear that flag for ``contents``."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    for entry in data["added_tokens"]:
        if entry["content"] in contents:
            entry["special"] = False
    return Tokenizer.from_str(json.dumps(data))


def write_tokenizer_files(
    tok,
    out_dir: Path,
    model_max_length: int,
    chat_template: str = CHAT_TEMPLATE,
    added_tokens: tuple[str, ...] = (),
) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json.

    Returns the ids of the special and added tokens by name.
    """
    out_dir = Path(out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in (*SPECIAL_TOKENS, *added_tokens)}
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
        for t in ids
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": chat_template,
    }
    special_map = {
        "additional_special_tokens": [IM_START, IM_END],
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", special_map)
    return ids


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")
