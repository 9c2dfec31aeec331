"""The FP32 reference in host memory against the layer-streamed one (runners/streamed.py), on a wide random
Llama whose FP32 weights are >= 4 GB (written in BF16, one shard per layer, to a temp dir deleted after).

Each side runs in its own subprocess (peak RSS is then each one's own: VmHWM of /proc/self/status, not ru_maxrss,
which Linux carries over from the parent through fork and exec, here the parent that wrote the model): load + score
every prompt
at every position (the one teacher-forced pass of precision.reference_scoring: device). max_rel_diff is, per
row, max |streamed - in-memory| / max |in-memory|, the largest over rows.
The last line printed is a JSON object:
{"fp32_weight_bytes", "peak_rss_bytes" (streamed), "in_memory_peak_rss_bytes", "in_memory_s", "streamed_s",
 "max_rel_diff", ...}

    python benchmarks/reference.py --quick
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_npuprec.standins.random_weights import RandomLlama

# 9 layers of 0.40 GB + embeddings and lm_head of 0.39 GB each: 4.4 GB in FP32
QUICK = RandomLlama(hidden_size=3072, intermediate_size=8192, num_hidden_layers=9, vocab_size=32000)
PROMPTS, PROMPT_LEN = 4, 48


def child(mode: str, model: Path, out: Path) -> None:
    """One side: load and score, then print seconds and this process's peak RSS."""
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest
    from pytest_npuprec.runners.streamed import StreamedRunner

    rng = np.random.default_rng(0)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    sequences = [rng.integers(1, vocab, size=PROMPT_LEN + 8 * i).tolist() for i in range(PROMPTS)]
    runner = StreamedRunner(model) if mode == "streamed" else TransformersRunner(model)
    started = time.perf_counter()
    with runner as ref:
        ref.score([ScoreRequest(s, tuple(range(len(s))), out / f"{mode}-{i}.npy") for i, s in enumerate(sequences)])
        info = dict(ref.info)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_bytes": peak_rss(),
                      "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "info": info}))


def peak_rss() -> int:
    """This process's own peak resident memory (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM in /proc/self/status: the benchmark measures peak memory on Linux only")


def run_child(mode: str, model: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--model", str(model), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} reference failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_rel_diff(out: Path) -> float:
    worst = 0.0
    for i in range(PROMPTS):
        a, b = np.load(out / f"in_memory-{i}.npy"), np.load(out / f"streamed-{i}.npy")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return float("nan")
        worst = max(worst, float((np.abs(a - b).max(axis=1) / np.abs(a).max(axis=1)).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the 4.4 GB model, run once (the only size for now)")
    parser.add_argument("--child", choices=("in_memory", "streamed"))
    parser.add_argument("--model", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.out)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still remove the temp dir (and the child)
    with tempfile.TemporaryDirectory(prefix="npuprec-reference-bench-") as tmp:
        model, out = Path(tmp) / "model", Path(tmp) / "logits"
        out.mkdir()
        started = time.perf_counter()
        QUICK.write(model)
        print(f"wrote {QUICK} ({QUICK.fp32_bytes() / 2**30:.2f} GiB in FP32) in {time.perf_counter() - started:.1f} s",
              flush=True)
        streamed = run_child("streamed", model, out)
        print("streamed", json.dumps(streamed), flush=True)
        in_memory = run_child("in_memory", model, out)
        print("in_memory", json.dumps(in_memory), flush=True)
        fp32 = QUICK.fp32_bytes()
        figures = {"fp32_weight_bytes": fp32, "peak_rss_bytes": streamed["peak_rss_bytes"],
                   "in_memory_s": in_memory["seconds"], "streamed_s": streamed["seconds"],
                   "max_rel_diff": max_rel_diff(out), "in_memory_peak_rss_bytes": in_memory["peak_rss_bytes"],
                   "peak_rss_over_fp32": round(streamed["peak_rss_bytes"] / fp32, 3),
                   "streamed_over_in_memory": round(streamed["seconds"] / in_memory["seconds"], 3),
                   "prompts": PROMPTS, "tokens": sum(PROMPT_LEN + 8 * i for i in range(PROMPTS))}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
