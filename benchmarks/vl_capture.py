"""Vision capture on the VL stand-in: what the vision tap costs next to plain generation with the same images,
and the bytes a baseline would add per image.

Runs tiny-Qwen3-VL-8B-Instruct (the shipped stand-in, its config's image prompts) in one vLLM engine as its
config serves it, and measures on the same prompts and images (best of --repeats, after a warm-up):

  (a) plain greedy generation with the images                 plain_s (plain_first_s: the first run, which
                                                              also encodes every image)
  (b) teacher-forced logits capture                           capture_s
  (c) logits + vision capture (the vision tap)                vision_capture_s

Bytes per image: what the reference side of the vision tap writes per image (float32 embeddings and deepstack
features, measured from the capture's .npz files) and the same for Qwen3-VL-8B-Instruct's dimensions (computed,
not measured: out_hidden_size 4096, 3 deepstack levels, a 448 x 448 image = 196 tokens), plus the M-RoPE
positions per token (int64 x 3). The last line printed is a JSON object with every figure.

    python benchmarks/vl_capture.py
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from capture import timed  # benchmarks/capture.py (this script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-Qwen3-VL-8B-Instruct"
# Qwen3-VL-8B-Instruct: vision out_hidden_size, deepstack levels; a 448 x 448 image, 16-pixel patches, 2 x 2 merge
REAL_HIDDEN, REAL_LEVELS, REAL_TOKENS = 4096, 3, (448 // 16 // 2) ** 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pytest_npuprec.capture.prompts import load_tokenizer, render_prompts
    from pytest_npuprec.capture.session import scored_positions
    from pytest_npuprec.checkpoints.locate import locate_weights
    from pytest_npuprec.config.loader import select_configs
    from pytest_npuprec.runners.device import VllmRunner
    from pytest_npuprec.runners.environment import resolve_device
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest

    config = select_configs(REPO / "tests/e2e/models/configs", [MODEL])[0]
    path = locate_weights(config, [])
    prompts = render_prompts(config, load_tokenizer(path, False), path)
    ids, images = [p.token_ids for p in prompts], [p.images for p in prompts]
    n_images = sum(len(i) for i in images)
    figures: dict = {"model": MODEL, "prompts": len(prompts), "images": n_images, "max_tokens": args.max_tokens,
                     "repeats": args.repeats}
    tmp = Path(tempfile.mkdtemp(prefix="npuprec-vl-bench-"))

    def best(fn) -> float:
        return min(timed(fn)[1] for _ in range(args.repeats))

    with VllmRunner(path, config.serve, resolve_device("auto")) as dev:
        dev.generate(ids[:1], 2, images=images[:1])  # warm-up
        # the first run encodes every image; vLLM's encoder cache (by image hash) serves the timed repeats, so
        # those time the language side and the capture, the same for (a), (b) and (c)
        conts, figures["plain_first_s"] = timed(lambda: dev.generate(ids, args.max_tokens, images=images))
        seqs = [tuple(p) + tuple(c) for p, c in zip(ids, conts)]
        positions = [scored_positions(len(p), len(s), "continuation") for p, s in zip(ids, seqs)]

        def requests(side: str, taps: bool) -> list:
            return [ScoreRequest(s, pos, tmp / f"{side}-{i}.npy", {"vision": tmp / f"{side}-{i}.vision.npz"} if taps
                                 else {}, images=im)
                    for i, (s, pos, im) in enumerate(zip(seqs, positions, images))]

        figures["plain_s"] = best(lambda: dev.generate(ids, args.max_tokens, images=images))
        figures["capture_s"] = best(lambda: dev.score(requests("device", False)))
        figures["vision_capture_s"] = best(lambda: dev.score(requests("device", True)))
    with TransformersRunner(path, False) as ref:
        ref.score(requests("reference", True))
    per_image, positions_bytes, tokens = [], 0, 0
    for i in range(len(prompts)):
        with np.load(tmp / f"reference-{i}.vision.npz") as arrays:
            per_image += [arrays[f"embeds_{k}"].nbytes + (arrays[f"deepstack_{k}"].nbytes
                                                          if f"deepstack_{k}" in arrays.files else 0)
                          for k in range(len(arrays["offsets"]))]
            positions_bytes += arrays["positions"].nbytes
            tokens += arrays["positions"].shape[-1]
    figures.update({
        "vision_capture_over_plain": round(figures["vision_capture_s"] / figures["plain_s"], 3),
        "vision_over_logits_capture": round(figures["vision_capture_s"] / figures["capture_s"], 3),
        "bytes_per_image": {"min": min(per_image), "max": max(per_image), "mean": round(float(np.mean(per_image)))},
        "mrope_bytes_per_token": positions_bytes // max(1, tokens),
        "qwen3_vl_8b_bytes_per_448px_image_float32": REAL_TOKENS * REAL_HIDDEN * (1 + REAL_LEVELS) * 4,
        "qwen3_vl_8b_bytes_per_448px_image_bfloat16": REAL_TOKENS * REAL_HIDDEN * (1 + REAL_LEVELS) * 2,
    })
    for key in ("plain_first_s", "plain_s", "capture_s", "vision_capture_s"):
        figures[key] = round(figures[key], 3)
    print(f"\n{MODEL}: {len(prompts)} prompts, {n_images} images, {args.max_tokens} tokens (best of {args.repeats}): "
          f"plain generation {figures['plain_s']} s, logits capture {figures['capture_s']} s, logits + vision "
          f"{figures['vision_capture_s']} s ({figures['vision_capture_over_plain']}x plain, "
          f"{figures['vision_over_logits_capture']}x the logits capture); a baseline would add "
          f"{figures['bytes_per_image']['mean']} B per stand-in image (float32 embeddings + deepstack) and "
          f"{figures['mrope_bytes_per_token']} B of M-RoPE positions per token; Qwen3-VL-8B (computed): "
          f"{figures['qwen3_vl_8b_bytes_per_448px_image_float32'] >> 20} MiB per 448x448 image in float32, "
          f"{figures['qwen3_vl_8b_bytes_per_448px_image_bfloat16'] >> 20} MiB in bfloat16")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
