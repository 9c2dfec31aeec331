"""Full-vocab logit capture at a real vocabulary size: how much it costs next to plain generation.

Builds (once, cached) a wide stand-in with Qwen3-4B's vocabulary (151,936) and hidden size (2560),
two layers, random BF16 weights, and measures in one process, side by side, on the same
7 prompts x 32 greedy tokens:

  (a) plain greedy generation in vLLM                       plain_s
  (b) vLLM's public full-vocab path, SamplingParams(logprobs=-1)   naive_s   (skipped by --quick)
  (c) the suite's device capture (in-engine hook)           capture_s
  (d) the suite's FP32 reference capture (transformers)     reference_s
  (e) greedy generation with the logits of every step captured (decode phase)   decode_capture_s
      (best of 3, interleaved with 3 plain generations: decode_capture_over_plain)

plus one long-prompt case (capture of the continuation positions after a long prompt).
RSS is the sum over this process and the engine's child processes, sampled every 20 ms.
The last line printed is a JSON object with every figure.

    python benchmarks/capture.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pytest_npuprec.atomic import staged_dir

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 151_936, 2560, 2, 32, 8, 128, 9728
PROMPTS, MAX_TOKENS = 7, 32
BUILD_VERSION = 1


def wide_standin(root: Path) -> Path:
    """A Qwen3ForCausalLM with the real vocabulary and width, random weights, a word-level tokenizer."""
    config = qwen3_config("Qwen3ForCausalLM", "qwen3", VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM,
                          intermediate_size=FFN)

    def mlp(p: str, randn) -> dict:
        return {p + "mlp.gate_proj.weight": randn(FFN, HIDDEN), p + "mlp.up_proj.weight": randn(FFN, HIDDEN),
                p + "mlp.down_proj.weight": randn(HIDDEN, FFN)}

    return random_checkpoint(root / f"wide-qwen3-v{BUILD_VERSION}", config, mlp)


def random_checkpoint(folder: Path, config: dict, mlp) -> Path:
    """Build `folder` once: config.json, random BF16 weights (seed 0; each layer's attention, then mlp(prefix,
    randn)), a word-level tokenizer."""
    if (folder / "done").is_file():
        return folder
    import torch
    from safetensors.torch import save_file

    hidden, heads, kv_heads, head_dim = (config[k] for k in ("hidden_size", "num_attention_heads",
                                                              "num_key_value_heads", "head_dim"))
    with staged_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        randn = seeded_randn(0)
        tensors = {"model.embed_tokens.weight": randn(config["vocab_size"], hidden),
                   "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}."
            tensors.update(attention_tensors(p, randn, hidden, heads, kv_heads, head_dim))
            tensors.update(mlp(p, randn))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_word_tokenizer(tmp, config["vocab_size"])
    return folder


def qwen3_config(architecture: str, model_type: str, vocab: int, hidden: int, layers: int, heads: int,
                 kv_heads: int, head_dim: int, **more) -> dict:
    """config.json of a random-weight Qwen3-family checkpoint (tied embeddings, <eos> = 1)."""
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": vocab, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": head_dim, "max_position_embeddings": 40960, "rope_theta": 1_000_000, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16", "hidden_act": "silu", "attention_bias": False,
            "bos_token_id": 1, "eos_token_id": 1, **more}


def seeded_randn(seed: int):
    """randn(*shape, std=0.02) -> BF16 tensor, from one seeded generator."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=0.02):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    return randn


def write_word_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer ("w<id>" words, <eos> = 1) for random-weight checkpoints, and the done marker."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "unk_token": "<unk>",
        "model_max_length": 40960}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    (folder / "done").write_text("ok")


def attention_tensors(prefix: str, randn, hidden: int, heads: int, kv_heads: int, head_dim: int) -> dict:
    """One Qwen3 decoder layer's attention and norm tensors (random projections, unit norms)."""
    import torch

    ones = lambda n: torch.ones(n, dtype=torch.bfloat16)  # noqa: E731
    return {
        prefix + "self_attn.q_proj.weight": randn(heads * head_dim, hidden),
        prefix + "self_attn.k_proj.weight": randn(kv_heads * head_dim, hidden),
        prefix + "self_attn.v_proj.weight": randn(kv_heads * head_dim, hidden),
        prefix + "self_attn.o_proj.weight": randn(hidden, heads * head_dim),
        prefix + "self_attn.q_norm.weight": ones(head_dim),
        prefix + "self_attn.k_norm.weight": ones(head_dim),
        prefix + "input_layernorm.weight": ones(hidden),
        prefix + "post_attention_layernorm.weight": ones(hidden),
    }


class RssSampler:
    """Peak resident memory of this process and all its children, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # a child that just exited
                pass
        return total

    @contextmanager
    def measure(self):
        self.peak, self._stop = self.rss(), threading.Event()

        def loop():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.rss())
                time.sleep(self.interval)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join()
            self.peak = max(self.peak, self.rss())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip (b), vLLM's logprobs=-1 path (minutes)")
    parser.add_argument("--long-tokens", type=int, default=8192, help="prompt length of the long case (0: skip)")
    parser.add_argument("--decode-only", action="store_true", help="only (a) and (e): the decode capture cost")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("NPUPREC_CACHE_DIR", "~/.cache/pytest-npuprec")).expanduser() / "bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    from pytest_npuprec.capture.session import scored_positions
    from pytest_npuprec.config.schema import ServeConfig
    from pytest_npuprec.runners.device import VllmRunner
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest

    model, build_s = timed(lambda: wide_standin(args.cache))
    rng = np.random.default_rng(0)
    prompts = [tuple(int(t) for t in rng.integers(2, VOCAB, size=int(n))) for n in rng.integers(8, 40, PROMPTS)]
    long_prompt = tuple(int(t) for t in rng.integers(2, VOCAB, size=args.long_tokens)) if args.long_tokens else None
    sampler = RssSampler()
    figures: dict[str, float | int | None] = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "layers": LAYERS,
                                              "prompts": PROMPTS, "max_tokens": MAX_TOKENS,
                                              "long_prompt_tokens": args.long_tokens or None}
    tmp = Path(tempfile.mkdtemp(prefix="npuprec-bench-"))

    # (d) the FP32 reference: generate, then score prompt + continuation
    if args.decode_only:
        return decode_cost(model, prompts, tmp, figures)
    with TransformersRunner(model) as ref:
        def reference_capture():
            conts = ref.generate(prompts, MAX_TOKENS)
            ref.score([ScoreRequest(p + c, scored_positions(len(p), len(p + c), "continuation"), tmp / f"ref-{i}.npy")
                       for i, (p, c) in enumerate(zip(prompts, conts))])
            return conts
        with sampler.measure():
            conts, figures["reference_s"] = timed(reference_capture)
        figures["reference_peak_rss_mib"] = sampler.peak >> 20
        if long_prompt:
            long_cont = ref.generate([long_prompt], MAX_TOKENS)[0]
            seq = long_prompt + long_cont
            _, figures["long_reference_s"] = timed(lambda: ref.score([ScoreRequest(
                seq, scored_positions(len(long_prompt), len(seq), "continuation"), tmp / "ref-long.npy")]))

    serve = ServeConfig(max_model_len=32768, enforce_eager=True, extra={"max_logprobs": -1})
    with VllmRunner(model, serve, device="cpu") as dev:
        dev.generate(prompts[:1], 4)  # warm-up: first-call overheads belong to neither path
        with sampler.measure():
            _, figures["plain_s"] = timed(lambda: dev.generate(prompts, MAX_TOKENS))
        plain_peak = sampler.peak
        measure_decode_capture(dev, prompts, tmp, figures)

        def device_capture():
            dev.score([ScoreRequest(p + c, scored_positions(len(p), len(p + c), "continuation"), tmp / f"dev-{i}.npy")
                       for i, (p, c) in enumerate(zip(prompts, conts))])
        with sampler.measure():
            _, figures["capture_s"] = timed(device_capture)
        figures["peak_rss_delta_mib"] = max(0, sampler.peak - plain_peak) >> 20
        figures["captured_mib"] = sum((tmp / f"dev-{i}.npy").stat().st_size for i in range(PROMPTS)) >> 20

        if long_prompt:
            seq = long_prompt + long_cont
            positions = scored_positions(len(long_prompt), len(seq), "continuation")
            _, figures["long_plain_s"] = timed(lambda: dev.generate([long_prompt], MAX_TOKENS))
            with sampler.measure():
                _, figures["long_capture_s"] = timed(lambda: dev.score([ScoreRequest(seq, positions, tmp / "dev-long.npy")]))
            figures["long_captured_rows"] = len(positions)

        if not args.quick:
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt

            params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=-1)
            with sampler.measure():
                _, figures["naive_s"] = timed(lambda: dev.llm.generate(
                    [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False))
            figures["naive_peak_rss_delta_mib"] = max(0, sampler.peak - plain_peak) >> 20

    figures["capture_over_plain"] = round(figures["capture_s"] / figures["plain_s"], 3)
    if "naive_s" in figures:
        figures["naive_over_capture"] = round(figures["naive_s"] / figures["capture_s"], 1)
    figures["stand_in_build_s"] = round(build_s, 1)

    print(f"\nvocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers; {PROMPTS} prompts x {MAX_TOKENS} greedy tokens")
    rows = [("(a) plain greedy generation (vLLM)", "plain_s"), ("(b) vLLM logprobs=-1", "naive_s"),
            ("(c) device capture (in-engine hook)", "capture_s"), ("(d) FP32 reference capture", "reference_s")]
    if long_prompt:
        rows += [(f"long prompt ({args.long_tokens} tok): plain generation", "long_plain_s"),
                 (f"long prompt ({args.long_tokens} tok): device capture", "long_capture_s"),
                 (f"long prompt ({args.long_tokens} tok): reference capture", "long_reference_s")]
    for label, key in rows:
        value = figures.get(key)
        print(f"  {label:<52} {'skipped (--quick)' if value is None else f'{value:8.2f} s'}")
    print(f"  capture / plain = {figures['capture_over_plain']}   peak RSS growth of capture over plain = "
          f"{figures['peak_rss_delta_mib']} MiB   captured logits = {figures['captured_mib']} MiB")
    for key in ("plain_s", "capture_s", "reference_s", "naive_s", "long_plain_s", "long_capture_s", "long_reference_s"):
        if isinstance(figures.get(key), float):
            figures[key] = round(figures[key], 3)
    print(f"  decode capture / plain generation = {figures['decode_capture_over_plain']} "
          f"(best of 3: {figures['decode_capture_s']:.3f} s vs {figures['decode_plain_s']:.3f} s)")
    print(json.dumps(figures))
    return 0


def measure_decode_capture(dev, prompts, tmp: Path, figures: dict) -> None:
    """(e): the same batched generation with and without every step's logits captured; interleaved, best of 3
    each, so a busy neighbour on the box does not land on one side only."""
    plain, captured = [], []
    for _ in range(3):
        plain.append(timed(lambda: dev.generate(prompts, MAX_TOKENS))[1])
        captured.append(timed(lambda: dev.generate(prompts, MAX_TOKENS, logits_out=[
            tmp / f"steps-{i}.npy" for i in range(len(prompts))]))[1])
    figures["decode_plain_s"], figures["decode_capture_s"] = round(min(plain), 3), round(min(captured), 3)
    figures["decode_capture_over_plain"] = round(min(captured) / min(plain), 3)
    figures["decode_captured_mib"] = sum((tmp / f"steps-{i}.npy").stat().st_size for i in range(len(prompts))) >> 20


def decode_cost(model: Path, prompts, tmp: Path, figures: dict) -> int:
    from pytest_npuprec.config.schema import ServeConfig
    from pytest_npuprec.runners.device import VllmRunner

    with VllmRunner(model, ServeConfig(max_model_len=4096, enforce_eager=True), device="cpu") as dev:
        dev.generate(prompts[:1], 4)  # warm-up
        measure_decode_capture(dev, prompts, tmp, figures)
    print(f"\nvocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers; {PROMPTS} prompts x {MAX_TOKENS} greedy tokens")
    print(f"  decode capture / plain generation = {figures['decode_capture_over_plain']} "
          f"(best of 3: {figures['decode_capture_s']:.3f} s vs {figures['decode_plain_s']:.3f} s, "
          f"{figures['decode_captured_mib']} MiB of step logits)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
