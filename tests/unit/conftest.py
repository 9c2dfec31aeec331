"""Synthetic captures: known logits on both sides, without any engine."""
from __future__ import annotations

import numpy as np
import pytest

from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput

try:
    from hypothesis import settings
except ImportError:  # the property-test modules skip themselves
    pass
else:
    # What the property tests check is the metrics, not their speed: on the 2-core CI box two test workers and
    # their engines share the cores, and one example took 374 ms against hypothesis' default 200 ms deadline.
    settings.register_profile("npuprec", deadline=None)
    settings.load_profile("npuprec")


def build_capture(folder, reference: list[np.ndarray], device: list[np.ndarray],
                  ref_tokens: list[tuple[int, ...]] | None = None,
                  dev_tokens: list[tuple[int, ...]] | None = None, prompt_len: int = 3) -> ModelCapture:
    """One prompt per logits pair; rows are the continuation positions; tokens default to each side's argmax."""
    writer = CaptureWriter(folder)
    records = []
    for i, (ref, dev) in enumerate(zip(reference, device)):
        rt = ref_tokens[i] if ref_tokens else tuple(int(t) for t in ref.argmax(axis=1))
        dt = dev_tokens[i] if dev_tokens else tuple(int(t) for t in dev.argmax(axis=1))
        prompt = PromptInput(index=i, id=f"p{i + 1}", label=f"prompt number {i + 1}", token_ids=tuple(range(prompt_len)))
        scored = prompt.token_ids + rt
        positions = tuple(range(prompt_len - 1, prompt_len - 1 + len(rt)))
        np.save(writer.logits_path("reference", i), ref.astype(np.float32))
        np.save(writer.logits_path("device", i), dev.astype(np.float32))
        np.save(writer.logits_path("device-steps", i), dev.astype(np.float32))  # its generation's steps, alike
        records.append(PromptCapture(prompt, scored, positions, {"reference": rt, "device": dt}, {}))
    return writer.finish(ModelCapture("toy", records, {"positions_mode": "continuation", "max_tokens": 4}))


@pytest.fixture
def make_capture(tmp_path):
    counter = iter(range(1000))
    return lambda *a, **k: build_capture(tmp_path / f"cap{next(counter)}", *a, **k)


@pytest.fixture
def confident_logits():
    """Reference logits with a clear top-1 per row (3 prompts x 4 positions x 50 vocab)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        logits = rng.normal(0, 2, size=(4, 50))
        logits[np.arange(4), rng.integers(0, 50, 4)] += 12
        out.append(logits)
    return out


@pytest.fixture(scope="session")
def standin():
    """standin(name) -> checkpoint folder: the copy the package ships (the same bytes on every
    machine), or with $NPUPREC_STANDINS=build this machine's own build (in the stand-in cache)."""

    def get(name: str):
        for module in ("torch", "transformers", "tokenizers"):
            pytest.importorskip(module)
        from pytest_npuprec.standins import ensure_standin

        return ensure_standin(name)

    return get


@pytest.fixture(scope="session")
def load_hf():
    """load_hf(folder, trust_remote_code=False, dtype=float32) -> (tokenizer, eval model), offline."""

    def load(folder, trust_remote_code: bool = False, dtype=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            mp.setenv("TRANSFORMERS_OFFLINE", "1")
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32,
                                                         trust_remote_code=trust_remote_code).eval()
        return tok, model

    return load


# A greedy choice whose top-two logits are closer than this could flip between machines (another
# CPU's FP32 kernels differ by ~1e-5 here) or between faithful builds: an assertion on an exact
# greedy output must also show its margin is wider, or it tests rounding, not the model.
NEAR_TIE_LOGITS = 0.05


@pytest.fixture(scope="session")
def assert_decisive():
    """assert_decisive(model, prompt_ids, new_ids): every greedy step that chose `new_ids` after
    `prompt_ids` did so by more than NEAR_TIE_LOGITS (top-1 minus top-2 logit, teacher-forced in
    one forward pass). Returns the smallest gap."""

    def check(model, prompt_ids, new_ids) -> float:
        import torch

        ids = list(prompt_ids) + list(new_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, len(prompt_ids) - 1 : len(ids) - 1].float()
        top2 = logits.topk(2, dim=-1).values
        gaps = (top2[:, 0] - top2[:, 1]).tolist()
        step = min(range(len(gaps)), key=gaps.__getitem__)
        assert gaps[step] > NEAR_TIE_LOGITS, (
            f"greedy step {step} won by only {gaps[step]:.4f} logits (<= {NEAR_TIE_LOGITS}): an exact-output "
            "assertion here depends on rounding; pick a prompt the model answers decisively")
        return gaps[step]

    return check


def corpus_next_word(prefix: str) -> str:
    """The word that follows `prefix` in the bundled corpus, with its leading space; the prefix must
    have exactly one continuation there, or no model can be expected to know it."""
    import re

    from pytest_npuprec.standins import corpus

    words = {m.group(1) for d in corpus.documents() for m in re.finditer(re.escape(prefix) + r"( [\w'-]+)", d)}
    assert len(words) == 1, f"prefix {prefix!r} continues as {sorted(words) or 'nothing'} in the corpus"
    return words.pop()


@pytest.fixture(scope="session")
def next_word_prob():
    """next_word_prob(tok, model, prefix) -> the probability the model gives the corpus's next word
    after `prefix`, as the smallest over that word's tokens (teacher-forced; a word the tokenizer
    splits is scored whole). A continuous measure: unlike an argmax hit, it cannot flip on a near-tie."""

    def prob(tok, model, prefix: str) -> float:
        import torch

        ids = tok(prefix).input_ids
        full = tok(prefix + corpus_next_word(prefix)).input_ids
        assert full[: len(ids)] == ids, f"the next word merges into the prefix's last token: {prefix!r}"
        word = full[len(ids):]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + word])).logits[0, len(ids) - 1 : -1].float()
        return float(torch.softmax(logits, -1)[torch.arange(len(word)), torch.tensor(word)].min())

    return prob
