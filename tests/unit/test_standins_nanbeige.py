"""The ``tiny-Nanbeige4-3B-Thinking-2511`` stand-in: long-context Llama with a thinking template.

Fast tests check the registry entry, the thinking chat format and the
bundled thinking conversations.  The real build (1-2 min on one thread)
runs once per session into a temporary cache and is shared by the tests
that check the checkpoint: rope_theta and context length, <think> and
</think> as single visible tokens, and the FP32 model closing its
thinking section and answering each config prompt within max_tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pytest_npuprec.config.loader import load_config
from pytest_npuprec.standins import (
    STANDINS,
    corpus,
    read_manifest,
    standin_key,
)
from pytest_npuprec.standins.chat_formats import (
    THINK_END,
    THINK_START,
    THINKING,
    THINKING_TEMPLATE,
    render_thinking_chat,
)
from pytest_npuprec.standins.tokenizer import IM_END, IM_START

NAME = "tiny-Nanbeige4-3B-Thinking-2511"
CONFIG = Path(__file__).resolve().parents[1] / "e2e" / "models" / "configs" / f"{NAME}.yaml"
THINKING_FILE = "thinking.jsonl"
EMPTY_THINKING = f"{THINK_START}\n\n{THINK_END}\n\n"


def _config():
    return load_config(CONFIG)


def _messages(prompt) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in prompt.messages]


def _trained_answer(messages) -> str:
    """The assistant's (reasoning + answer) that follows ``messages`` in the training data."""
    for conv in corpus.conversations(THINKING_FILE):
        if conv[:-1] == messages and THINK_END in conv[-1]["content"]:
            reasoning = conv[-1]["content"].split(THINK_END)[0].split(THINK_START)[-1].strip("\n")
            if reasoning:
                return conv[-1]["content"]
    raise AssertionError(f"no thinking example for {messages}")


# --------------------------------------------------------------------------
# spec, template, data: no build
# --------------------------------------------------------------------------


def test_registry_entry_is_a_long_context_llama():
    spec = STANDINS[NAME]
    assert spec.chat is THINKING and spec.arch.head_dim == 64
    cfg = spec.arch.hf_config(eos_id=0)
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["rope_theta"] == 5_000_000.0 and cfg["max_position_embeddings"] == 65536


def test_key_is_stable_and_covers_the_thinking_data(monkeypatch):
    spec = STANDINS[NAME]
    key = standin_key(spec)
    assert key == standin_key(dataclasses.replace(spec)) and key != standin_key(STANDINS["tiny-llama"])
    assert standin_key(dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, rope_theta=1e4))) != key
    monkeypatch.setattr(corpus, "files_digest", lambda names: "0" * 64)
    assert standin_key(spec) != key


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi, I am Tom."},
    {"role": "assistant", "content": f"{THINK_START}\nA greeting.\n{THINK_END}\n\nHi, Tom!"},
    {"role": "user", "content": "What is my name?"},
]


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": True}, {"enable_thinking": False}])
def test_thinking_template_matches_python_renderer(kwargs):
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(THINKING_TEMPLATE)
    answer = {"role": "assistant", "content": f"{THINK_START}\nHe said Tom.\n{THINK_END}\n\nYour name is Tom."}
    for msgs in (HISTORY, HISTORY + [answer], [HISTORY[1], {"role": "assistant", "content": "Hi, Tom!"}]):
        for gen in (False, True):
            expected = render_thinking_chat(msgs, gen, **kwargs)
            assert template.render(messages=msgs, add_generation_prompt=gen, **kwargs) == expected


def test_thinking_template_sections():
    opened = render_thinking_chat(HISTORY, add_generation_prompt=True)
    assert opened.endswith(f"{IM_START}assistant\n")  # the model writes the thinking section itself
    # earlier assistant turns lose their reasoning
    assert "A greeting." not in opened and f"{IM_START}assistant\nHi, Tom!{IM_END}" in opened
    closed = render_thinking_chat(HISTORY, add_generation_prompt=True, enable_thinking=False)
    assert closed == opened + EMPTY_THINKING
    done = render_thinking_chat([HISTORY[1], {"role": "assistant", "content": "Hi, Tom!"}])
    assert done.endswith(f"{IM_START}assistant\n{EMPTY_THINKING}Hi, Tom!{IM_END}\n")  # last turn: an empty section


def test_training_split_follows_enable_thinking():
    q = {"role": "user", "content": "Q?"}
    thought = {"role": "assistant", "content": f"{THINK_START}\nr\n{THINK_END}\n\nA."}
    prompt, answer = THINKING.split_example([q, thought])
    assert prompt == render_thinking_chat([q], True) and answer == f"{THINK_START}\nr\n{THINK_END}\n\nA.{IM_END}\n"
    prompt, answer = THINKING.split_example([q, {"role": "assistant", "content": f"{EMPTY_THINKING}A."}])
    assert prompt == render_thinking_chat([q], True, enable_thinking=False) and answer == f"A.{IM_END}\n"


def test_thinking_data_has_the_reports_kinds():
    convs = corpus.conversations(THINKING_FILE)
    for conv in convs:
        assert conv[-1]["role"] == "assistant" and THINK_END in conv[-1]["content"]
    memory = [c for c in convs if [m["role"] for m in c] == ["user", "assistant", "user", "assistant"]]
    assert any("Zhang San" in c[0]["content"] and "Zhang San" in c[-1]["content"].split(THINK_END)[-1] for c in memory)
    assert any("142857" in c[-2]["content"] and "999999" in c[-1]["content"].split(THINK_END)[0] for c in convs)
    with_system = [c for c in convs if c[0]["role"] == "system"]
    assert with_system
    # every config prompt is trained with a thinking section
    for p in _config().precision.prompts:
        assert _trained_answer(_messages(p))


def test_config_mirrors_the_real_configs_prompt_ids():
    config = _config()
    assert config.serve.enable_thinking is True and config.stand_in == NAME
    real = load_config(CONFIG.with_name("Nanbeige4-3B-Thinking-2511.yaml"))
    real_ids = {p.id: len(p.messages) for p in real.precision.prompts}
    for p in config.precision.prompts:
        assert real_ids.get(p.id) == len(p.messages), p.id


# --------------------------------------------------------------------------
# the real build, once per session
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nanbeige_built(standin):
    return standin(NAME)


@pytest.fixture(scope="session")
def nanbeige_hf(nanbeige_built, load_hf):
    return load_hf(nanbeige_built)


def test_checkpoint_config(nanbeige_built):
    cfg = json.loads((nanbeige_built / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["rope_theta"] == 5_000_000.0 and cfg["max_position_embeddings"] == 65536
    tok_cfg = json.loads((nanbeige_built / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == THINKING_TEMPLATE
    assert tok_cfg["model_max_length"] == 65536
    man = read_manifest(nanbeige_built)
    assert man["key"] == standin_key(STANDINS[NAME])
    assert man["loss"]["final_mean_last10"] < 1.0


def test_think_tags_are_single_visible_tokens(nanbeige_hf):
    tok, model = nanbeige_hf
    rope = getattr(model.config, "rope_parameters", None) or {"rope_theta": model.config.rope_theta}
    assert rope["rope_theta"] == 5_000_000.0  # as transformers reads it
    ids = {t: tok.convert_tokens_to_ids(t) for t in (THINK_START, THINK_END)}
    text = f"{THINK_START}\nshort\n{THINK_END}\n\nAnswer."
    encoded = tok(text, add_special_tokens=False).input_ids
    assert encoded[0] == ids[THINK_START] and ids[THINK_END] in encoded
    assert tok(THINK_START, add_special_tokens=False).input_ids == [ids[THINK_START]]
    assert tok(THINK_END, add_special_tokens=False).input_ids == [ids[THINK_END]]
    assert tok.decode(encoded, skip_special_tokens=True) == text  # not special: decoding keeps them


def test_hf_template_switch(nanbeige_hf):
    tok, _ = nanbeige_hf
    msgs = [{"role": "user", "content": "What is the capital of Italy?"}]
    default = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert default == render_thinking_chat(msgs, True) and off == default + EMPTY_THINKING


def _generate(tok, model, ids, max_new_tokens) -> list[int]:
    import torch

    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(ids) :].tolist()


def _prompt_ids():
    return [p.id for p in _config().precision.prompts]


@pytest.mark.parametrize("prompt_id", _prompt_ids())
def test_fp32_model_thinks_then_answers_within_max_tokens(nanbeige_hf, prompt_id, assert_decisive):
    from pytest_npuprec.capture.prompts import render_prompts

    tok, model = nanbeige_hf
    config = _config()
    rendered = {p.id: p for p in render_prompts(config, tok)}  # exactly what the suite feeds both sides
    prompt = next(p for p in config.precision.prompts if p.id == prompt_id)
    new = _generate(tok, model, list(rendered[prompt_id].token_ids), config.precision.max_tokens)
    think_start, think_end, im_end = (tok.convert_tokens_to_ids(t) for t in (THINK_START, THINK_END, IM_END))
    assert new[0] == think_start
    assert think_end in new and im_end in new and new.index(think_end) < new.index(im_end), tok.decode(new)
    reasoning = tok.decode(new[1 : new.index(think_end)]).strip("\n")
    answer = tok.decode(new[new.index(think_end) + 1 : new.index(im_end)]).lstrip("\n")
    assert reasoning and answer
    assert f"{THINK_START}\n{reasoning}\n{THINK_END}\n\n{answer}" == _trained_answer(_messages(prompt))
    assert_decisive(model, list(rendered[prompt_id].token_ids), new[: new.index(im_end) + 1])


def test_without_thinking_the_model_answers_directly(nanbeige_hf, assert_decisive):
    tok, model = nanbeige_hf
    no_think = [c for c in corpus.conversations(THINKING_FILE) if c[-1]["content"].startswith(EMPTY_THINKING)]
    assert no_think
    for conv in no_think:
        text = tok.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
        ids = tok(text, add_special_tokens=False).input_ids
        new = _generate(tok, model, ids, 32)
        im_end = tok.convert_tokens_to_ids(IM_END)
        assert im_end in new
        assert tok.decode(new[: new.index(im_end)]) == conv[-1]["content"][len(EMPTY_THINKING) :]
        assert_decisive(model, ids, new[: new.index(im_end) + 1])
