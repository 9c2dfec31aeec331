"""Measure the BF16 noise floor of a model config, to calibrate its thresholds.

The floor is transformers in BF16 against transformers in FP32 on the CPU: the error that BF16
arithmetic alone causes, with no engine or kernel differences. Next to it the script measures
the real device comparison (vLLM BF16 vs transformers FP32) and prints both, per metric, with
the worst value over prompts x positions, so a threshold can be set at floor x margin.

    python benchmarks/noise_floor.py --model tiny-llama [--no-vllm]

The last line printed is a JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--config-dir", type=Path, default=REPO / "tests/e2e/models/configs")
    parser.add_argument("--model-root", type=Path, action="append", default=[])
    parser.add_argument("--no-vllm", action="store_true", help="only the transformers BF16 vs FP32 floor")
    parser.add_argument("--per-prompt", action="store_true",
                        help="also print each prompt's KL mean and max (which prompts set the worst values)")
    args = parser.parse_args()

    from pytest_npuprec.calibrate.floor import FLOOR_DTYPE, capture_floor
    from pytest_npuprec.calibrate.session import summaries
    from pytest_npuprec.capture.prompts import load_tokenizer, perplexity_input, render_prompts
    from pytest_npuprec.capture.session import capture_model
    from pytest_npuprec.checkpoints.locate import locate_weights
    from pytest_npuprec.config.loader import select_configs
    from pytest_npuprec.capture.taps import model_taps
    from pytest_npuprec.measure.kinds import measure_perplexity
    from pytest_npuprec.measure.routing import measure_routing, router_logit_error
    from pytest_npuprec.measure.thresholds import measure
    from pytest_npuprec.runners.device import VllmRunner
    from pytest_npuprec.runners.environment import resolve_device
    from pytest_npuprec.runners.reference import TransformersRunner

    # the measurement is --npuprec-calibrate's (pytest_npuprec/calibrate/): one FP32 reference capture serves the
    # device comparison and the floor; this script prints it without touching the config
    config = select_configs(args.config_dir, [args.model])[0]
    precision = config.precision
    path = locate_weights(config, [p.resolve() for p in args.model_root])
    tokenizer = load_tokenizer(path, config.serve.trust_remote_code)
    prompts = render_prompts(config, tokenizer, path)
    n_compared = len(prompts)
    if config.checks.perplexity:  # its text is scored too: the ratio's floor calibrates max_ratio
        prompts.append(perplexity_input(config, tokenizer, len(prompts)))
    trust = config.serve.trust_remote_code
    floor_label, device_label = f"floor (transformers {FLOOR_DTYPE})", "device (vLLM bf16)"
    device = (lambda: TransformersRunner(path, trust, dtype=FLOOR_DTYPE)) if args.no_vllm else \
        (lambda: VllmRunner(path, config.serve, resolve_device("auto")))

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        taps = model_taps(config, path)
        first = capture_model(config.name, prompts, precision.max_tokens, precision.positions,
                              reference=lambda: TransformersRunner(path, trust), device=device,
                              folder=Path(tmp) / "device", taps=taps, meta={"model_path": str(path)})
        captures = {floor_label: first} if args.no_vllm else \
            {floor_label: capture_floor(first, trust, Path(tmp) / "floor", taps), device_label: first}
        for label, capture in captures.items():
            results[label] = summaries(capture, precision.tie_margin)
            routing = measure_routing(capture, 0.0)  # tie margin 0: every differing expert set is counted
            if routing is not None:
                load = routing.max_load_difference()
                results[label]["routing_agreement"] = {"mean": routing.agreement(), "min": routing.agreement(),
                                                       "max": routing.agreement()}
                results[label]["expert_load"] = {"mean": load, "min": load, "max": load}
                results[label]["routing_flip_margins"] = sorted(f.margin for f in routing.flips)
                error = router_logit_error(capture)  # None for the device: it writes expert ids, not logits
                if error is not None:
                    results[label]["router_logit_max_abs_diff"] = error
            if args.per_prompt:
                kl = measure(capture, precision.tie_margin).cells["kl_divergence"]
                for p in prompts[:n_compared]:
                    values = kl.values[kl.prompt == p.index]
                    print(f"{label}: {p.id:<24} {len(p.token_ids):>6} tokens  KL mean {values.mean():.3g} "
                          f"max {values.max():.3g} over {values.size} rows")
            if config.checks.perplexity:
                ppl = measure_perplexity(capture)
                results[label]["perplexity_ratio"] = {"mean": ppl.ratio, "min": ppl.ratio, "max": ppl.ratio}

    labels = list(results)
    print(f"{config.name}: {n_compared} prompts, {precision.max_tokens} tokens, positions {precision.positions}")
    header = f"{'metric':<22}" + "".join(f"{label + ' mean':>30}{'worst':>14}" for label in labels)
    print(header)
    from pytest_npuprec.metrics.registry import METRICS

    for name, spec in METRICS.items():
        if not all(name in results[label] for label in labels):
            continue  # routing metrics of a dense model
        row = f"{name:<22}"
        for label in labels:
            s = results[label][name]
            worst = s["min"] if spec.better == "higher" else s["max"]
            row += f"{s['mean']:>30.6g}{worst:>14.6g}"
        print(row)
    if config.checks.perplexity:
        print(f"{'perplexity_ratio':<22}" + "".join(f"{results[label]['perplexity_ratio']['mean']:>30.6g}{'':>14}"
                                                  for label in labels))
    for label in labels:
        if "routing_flip_margins" in results[label]:
            print(f"{label}: differing expert sets at reference margins {results[label]['routing_flip_margins']}; "
                  f"router logits max |diff| {results[label].get('router_logit_max_abs_diff', 'n/a')}")
    print(json.dumps({"model": config.name, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
