"""Per-position logit metrics: the six per-metric calls (plus a non-finite scan per side) against
the fused pass, metrics.logits.compare_rows, on one prompt's worth of logits at a real vocabulary.

Builds reference = normal(0, 3) float32 [rows x vocab] and device = reference + small noise, checks
that both ways give bitwise the same values, and times each, best of --repeats.
The last line printed is a JSON object with every figure.

    python benchmarks/metrics.py
    python benchmarks/metrics.py --rows 64 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from pytest_npuprec.metrics import logits as logit_metrics

VOCAB, ROWS = 151_936, 224


def per_metric(device: np.ndarray, reference: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """What measure/thresholds.py did before compare_rows: each metric, then a scan per side."""
    metrics = {name: fn(device, reference) for name, fn in logit_metrics.ROW_METRICS.items()}
    return metrics, [logit_metrics.nonfinite_rows(device), logit_metrics.nonfinite_rows(reference)]


def fused(device: np.ndarray, reference: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    comparison = logit_metrics.compare_rows(device, reference)
    return comparison.metrics, [comparison.device_nonfinite, comparison.reference_nonfinite]


def best_of(repeats: int, fn, *args) -> tuple[object, float]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return out, min(times)


def same_bits(a: tuple, b: tuple) -> bool:
    metrics_a, nonfinite_a = a
    metrics_b, nonfinite_b = b
    return (all(metrics_a[name].tobytes() == metrics_b[name].tobytes() for name in metrics_a)
            and all(np.array_equal(x, y) for x, y in zip(nonfinite_a, nonfinite_b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS, help="positions (logits rows) per side")
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--noise", type=float, default=1e-3, help="std of device - reference")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way; the best counts")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    reference = (3 * rng.standard_normal((args.rows, args.vocab))).astype(np.float32)
    device = (reference + args.noise * rng.standard_normal(reference.shape)).astype(np.float32)

    old, per_metric_s = best_of(args.repeats, per_metric, device, reference)
    new, fused_s = best_of(args.repeats, fused, device, reference)
    figures = {"rows": args.rows, "vocab": args.vocab, "repeats": args.repeats,
               "per_metric_s": round(per_metric_s, 3), "fused_s": round(fused_s, 3),
               "speedup": round(per_metric_s / fused_s, 2), "bitwise_identical": same_bits(old, new)}

    print(f"\n{args.rows} x {args.vocab} float32 logits per side, best of {args.repeats}")
    print(f"  six metric calls + two non-finite scans   {per_metric_s:8.3f} s")
    print(f"  compare_rows (one fused pass)             {fused_s:8.3f} s")
    print(f"  speedup {figures['speedup']}x   values bitwise identical: {figures['bitwise_identical']}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
