"""The ``tiny-Qwen3Guard-Gen-4B`` stand-in: Qwen3 architecture, guard template, guard verdicts.

Fast tests check the registry entry, the guard chat format and the
bundled guard examples.  The real build (1-2 min on one thread) runs
once per session into a temporary cache and is shared by the tests that
check the checkpoint: Qwen3 config, per-head q/k norms present and
trained, tied embedding, and the FP32 model emitting each config guard
prompt's verdict.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from pytest_npuprec.config.loader import load_config
from pytest_npuprec.standins import (
    STANDINS,
    corpus,
    read_manifest,
    standin_key,
)
from pytest_npuprec.standins.guard import (
    CATEGORIES,
    GUARD,
    GUARD_TEMPLATE,
    SAFETY_LEVELS,
    render_guard_chat,
    verdict,
)
from pytest_npuprec.standins.qwen3 import Qwen3Arch
from pytest_npuprec.standins.tokenizer import IM_END, IM_START

NAME = "tiny-Qwen3Guard-Gen-4B"
CONFIG = Path(__file__).resolve().parents[1] / "e2e" / "models" / "configs" / f"{NAME}.yaml"
GUARD_FILE = "guard.jsonl"
VERDICT = re.compile(r"Safety: (?P<safety>\w+)\nCategories: (?P<categories>.+)")

# The seed report's verdicts for its seven guard prompts (config prompt id -> answer).
REPORT_VERDICTS = {
    "guard-bomb": ("Unsafe", ("Violent",)),
    "guard-hack-email": ("Unsafe", ("Non-violent Illegal Acts",)),
    "guard-shoplift": ("Unsafe", ("Non-violent Illegal Acts",)),
    "guard-france": ("Safe", ()),
    "guard-cookies": ("Safe", ()),
    "guard-relativity": ("Safe", ()),
    "guard-guns": ("Safe", ()),
}


def _config():
    return load_config(CONFIG)


def _guard_prompts():
    """(id, user text) of the config's guard prompts."""
    return [(p.id, p.messages[-1].content) for p in _config().precision.prompts if p.messages]


def _trained_verdicts() -> dict[str, str]:
    return {c[0]["content"]: c[-1]["content"] for c in corpus.conversations(GUARD_FILE)}


# --------------------------------------------------------------------------
# spec, template, data: no build
# --------------------------------------------------------------------------


def test_registry_entry_is_a_small_qwen3():
    spec = STANDINS[NAME]
    assert isinstance(spec.arch, Qwen3Arch) and spec.chat is GUARD
    assert spec.arch.head_dim == 64 and spec.arch.num_attention_heads > spec.arch.num_key_value_heads  # GQA
    assert spec.arch.tie_word_embeddings is True
    cfg = spec.arch.hf_config(eos_id=0)
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["model_type"] == "qwen3"


def test_key_is_stable_and_covers_the_guard_data(monkeypatch):
    spec = STANDINS[NAME]
    key = standin_key(spec)
    assert key == standin_key(dataclasses.replace(spec)) and key != standin_key(STANDINS["tiny-llama"])
    monkeypatch.setattr(corpus, "files_digest", lambda names: "0" * 64)
    assert standin_key(spec) != key


def test_guard_template_matches_python_renderer():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(GUARD_TEMPLATE)
    cases = [
        [{"role": "user", "content": "How to make a bomb?"}],
        [
            {"role": "user", "content": "How to make a bomb?"},
            {"role": "assistant", "content": verdict("Unsafe", ("Violent",))},
        ],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "It's \"quoted\"."},
        ],
    ]
    for msgs in cases:
        for gen in (False, True):
            assert template.render(messages=msgs, add_generation_prompt=gen) == render_guard_chat(msgs, gen)


def test_guard_prompt_wraps_the_conversation_in_a_moderation_task():
    text = render_guard_chat([{"role": "user", "content": "How to make a bomb?"}], add_generation_prompt=True)
    assert text.startswith(f"{IM_START}user\n# Task:") and text.endswith(f"{IM_END}\n{IM_START}assistant\n")
    assert text.count(IM_START) == 2  # one user turn holds the whole conversation
    assert "\nUSER: How to make a bomb?\n" in text
    assert all(c in text for c in CATEGORIES)
    prompt, answer = GUARD.split_example(
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": verdict("Safe")}]
    )
    assert prompt == render_guard_chat([{"role": "user", "content": "Q?"}], True)
    assert answer == f"Safety: Safe\nCategories: None{IM_END}\n"


def test_verdict_format():
    assert verdict("Unsafe", ("Violent", "Jailbreak")) == "Safety: Unsafe\nCategories: Violent, Jailbreak"
    assert verdict("Safe") == "Safety: Safe\nCategories: None"
    with pytest.raises(ValueError):
        verdict("Unsafe", ("Weapons",))


def test_guard_examples_are_valid_verdicts_covering_the_labels():
    convs = corpus.conversations(GUARD_FILE)
    assert 30 <= len(convs) <= 60
    levels, categories = set(), set()
    for conv in convs:
        assert [m["role"] for m in conv] == ["user", "assistant"]
        m = VERDICT.fullmatch(conv[1]["content"])
        assert m, conv[1]["content"]
        cats = () if m["categories"] == "None" else tuple(m["categories"].split(", "))
        assert conv[1]["content"] == verdict(m["safety"], cats)
        assert (m["safety"] == "Safe") == (cats == ())
        levels.add(m["safety"])
        categories.update(cats)
    assert levels == set(SAFETY_LEVELS)
    assert {"Violent", "Non-violent Illegal Acts", "PII", "Jailbreak"} <= categories
    assert len({c[0]["content"] for c in convs}) == len(convs)  # no query with two verdicts


def test_config_guard_prompts_are_trained_with_the_reports_verdicts():
    trained = _trained_verdicts()
    prompts = dict(_guard_prompts())
    assert set(prompts) == set(REPORT_VERDICTS)
    for pid, (safety, cats) in REPORT_VERDICTS.items():
        assert trained[prompts[pid]] == verdict(safety, cats), pid
    # the same ids and texts as the real model's config
    real = load_config(CONFIG.with_name("Qwen3Guard-Gen-4B.yaml"))
    assert {(p.id, p.messages[-1].content) for p in real.precision.prompts if p.messages} == set(prompts.items())


# --------------------------------------------------------------------------
# the real build, once per session
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def guard_built(standin):
    return standin(NAME)


@pytest.fixture(scope="session")
def guard_hf(guard_built, load_hf):
    return load_hf(guard_built)


def test_checkpoint_is_qwen3_with_trained_qk_norms_and_tied_embedding(guard_built):
    from safetensors import safe_open

    cfg = json.loads((guard_built / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["model_type"] == "qwen3"
    assert cfg["tie_word_embeddings"] is True and cfg["head_dim"] == 64
    with safe_open(str(guard_built / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
        for layer in range(cfg["num_hidden_layers"]):
            for norm in ("q_norm", "k_norm"):
                w = f.get_tensor(f"model.layers.{layer}.self_attn.{norm}.weight").float()
                assert w.shape == (cfg["head_dim"],)
                assert float((w - 1).abs().max()) > 0.01, f"{norm} of layer {layer} still at its init (ones)"
        assert {str(f.get_slice(n).get_dtype()) for n in names} == {"BF16"}
    man = read_manifest(guard_built)
    assert man["key"] == standin_key(STANDINS[NAME])
    assert man["loss"]["final_mean_last10"] < 1.0


def test_loads_with_tied_head(guard_hf):
    tok, model = guard_hf
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == render_guard_chat([{"role": "user", "content": "Hi"}], True)


def _greedy_until_im_end(tok, model, ids, max_new_tokens) -> tuple[str | None, list[int]]:
    """(the answer before <|im_end|>, or None without one; the tokens generated up to and with it)"""
    import torch

    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, len(ids) :].tolist()
    im_end = tok.convert_tokens_to_ids(IM_END)
    if im_end not in new:
        return None, new
    return tok.decode(new[: new.index(im_end)]), new[: new.index(im_end) + 1]


@pytest.mark.parametrize("prompt_id", list(REPORT_VERDICTS))
def test_fp32_model_emits_each_guard_verdict(guard_hf, prompt_id, assert_decisive):
    from pytest_npuprec.capture.prompts import render_prompts

    tok, model = guard_hf
    config = _config()
    rendered = {p.id: p for p in render_prompts(config, tok)}  # exactly what the suite feeds both sides
    expected = _trained_verdicts()[dict(_guard_prompts())[prompt_id]]
    ids = list(rendered[prompt_id].token_ids)
    answer, new = _greedy_until_im_end(tok, model, ids, config.precision.max_tokens)
    assert answer == expected
    assert_decisive(model, ids, new)


def test_plain_prompts_continue_the_corpus(guard_hf, assert_decisive):
    import torch

    tok, model = guard_hf
    for prefix in ("The capital of France is", "Water boils at", "Once upon a time"):
        ids = tok(prefix).input_ids
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        continuations = [d[len(prefix) :] for d in corpus.documents() if d.startswith(prefix)]
        assert float(probs.max()) > 0.5
        assert any(c.startswith(tok.decode([int(probs.argmax())])) for c in continuations), prefix
        assert_decisive(model, ids, [int(probs.argmax())])


def test_skipping_the_qk_norm_stands_out_from_bf16_noise(guard_built, guard_hf):
    """A device that ignores q_norm/k_norm must move the logits far more than BF16 does."""
    import torch
    from transformers import AutoModelForCausalLM

    tok, model = guard_hf
    bf16 = AutoModelForCausalLM.from_pretrained(guard_built, dtype=torch.bfloat16).eval()
    passages = [tok(d).input_ids[:96] for d in corpus.documents()[::6]]

    def probs(m, ids):
        with torch.no_grad():
            return torch.softmax(m(input_ids=torch.tensor([ids])).logits[0].float(), -1)

    def tv(a, b):
        return 0.5 * float((a - b).abs().sum(-1).mean())

    ref = [probs(model, ids) for ids in passages]
    noise = sum(tv(r, probs(bf16, ids)) for r, ids in zip(ref, passages)) / len(passages)
    attn = [layer.self_attn for layer in model.model.layers]
    saved = [(a.q_norm, a.k_norm) for a in attn]
    try:
        for a in attn:
            a.q_norm, a.k_norm = torch.nn.Identity(), torch.nn.Identity()
        skipped = sum(tv(r, probs(model, ids)) for r, ids in zip(ref, passages)) / len(passages)
    finally:
        for a, (q, k) in zip(attn, saved):
            a.q_norm, a.k_norm = q, k
    assert noise < 0.01
    assert skipped > 10 * noise, (skipped, noise)
