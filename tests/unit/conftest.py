"""Synthetic captures: known logits on both sides, without any engine."""
from __future__ import annotations

import numpy as np
import pytest

from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput


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
def build_standin(tmp_path_factory):
    """build_standin(name) -> checkpoint folder, built once per session in an isolated cache
    (never the user's), so the build itself is what the tests see."""
    root = tmp_path_factory.mktemp("npuprec-cache")

    def build(name: str):
        for module in ("torch", "transformers", "tokenizers"):
            pytest.importorskip(module)
        from pytest_npuprec.standins import ensure_standin

        return ensure_standin(name, root)

    build.root = root
    return build


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
