"""A nightly run on a baseline vs the live FP32 reference, at the wide benchmark stand-in (capture.py's: vocab
151,936, hidden 2560, 2 layers, random BF16 weights; 7 prompts x 32 greedy tokens), each in its own process:

  (1) pytest -m npu on that model, live, with --npuprec-update-baselines   reference_s_live (from its report)
  (2) plain vLLM: start the engine, generate the same prompts greedily      plain_s (the process's wall time)
  (3) pytest -m npu on that model on the baseline (--npuprec-reference baseline)
                                                                            suite_s, reference_s_baseline

(2) and (3) alternate --repeat times (default 2), each waiting until no vLLM process of the run before is left;
suite_over_plain = best suite_s / best plain_s: what the whole gate costs on a baseline over just serving the prompts.
baseline_bytes is the model's baseline folder; full_logits_bytes the FP32 logits it stands for
(rows x vocab x 4 B). The last line printed is JSON.

    python benchmarks/nightly.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import MAX_TOKENS, PROMPTS, VOCAB, wide_standin  # noqa: E402

MODEL = "wide-qwen3"
CONFIG = """\
model_name: "{name}"
serve: {{dtype: bfloat16, max_model_len: 2048, enforce_eager: true}}
precision:
  max_tokens: {max_tokens}
  prompts: {prompts}
  thresholds:   # random weights: loose bounds, the benchmark is about time
    cosine_similarity: {{min: 0.9}}
    kl_divergence: {{max: 1.0}}
    relative_l2: {{max: 0.5}}
"""
PLAIN = """\
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
args = json.loads(sys.argv[1])
llm = LLM(**args["engine"])
llm.generate([TokensPrompt(prompt_token_ids=p) for p in args["prompts"]],
             SamplingParams(temperature=0.0, max_tokens=args["max_tokens"]), use_tqdm=False)
"""


def settle(limit_s: float = 120.0) -> None:
    """Wait until no vLLM process is left from the last run: a process that exits leaves its EngineCore and
    worker to finish exiting on their own, and their last seconds of CPU must not land in the next timing."""
    import psutil

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["name", "cmdline"])
                if (p.info["name"] or "").startswith("VLLM::") or " ".join(p.info["cmdline"] or []).startswith("VLLM::")]
        if not left:
            return
        time.sleep(0.5)
    sys.exit(f"vLLM processes still running after {limit_s:.0f} s: {[p.pid for p in left]}")


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    settle()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):  # 1: some check failed, still a timed run
        sys.exit(f"{' '.join(cmd[:4])} ... exited {proc.returncode}; see {log}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the wide stand-in only (the only mode so far)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="plain and suite runs, alternating; the best of each is compared (default 2)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("NPUPREC_CACHE_DIR", "~/.cache/pytest-npuprec")).expanduser() / "bench")
    parser.add_argument("--work", type=Path, default=None, help="folder for configs, baselines, reports, logs")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="npuprec-nightly-"))
    work.mkdir(parents=True, exist_ok=True)

    from pytest_npuprec.config.schema import ServeConfig
    from pytest_npuprec.runners.device import cpu_kv_cache_gib

    model = wide_standin(args.cache)
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{int(t)}" for t in rng.integers(2, VOCAB, size=int(n))) for n in rng.integers(8, 40, PROMPTS)]
    configs = work / "configs"
    configs.mkdir(exist_ok=True)
    (configs / f"{MODEL}.yaml").write_text(CONFIG.format(name=model.name, max_tokens=MAX_TOKENS,
                                                         prompts=json.dumps(texts)))
    baselines = work / "baselines"
    env = dict(os.environ, VLLM_USE_AOT_COMPILE=os.environ.get("VLLM_USE_AOT_COMPILE", "0"))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib(model, 2048)))
    suite = [sys.executable, "-m", "pytest", "-m", "npu", "-p", "no:cacheprovider", "-q", str(configs),
             "--npuprec-config-dir", str(configs), "--npuprec-model", MODEL, "--npuprec-model-root",
             str(model.parent), "--npuprec-baseline-dir", str(baselines)]

    run([*suite, "--npuprec-update-baselines", "--npuprec-report-dir", str(work / "live")], env, work / "live.log")
    live = json.loads((work / "live" / f"{MODEL}.json").read_text())

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    prompts = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    engine = dict(ServeConfig(max_model_len=2048, enforce_eager=True).engine_kwargs(), model=str(model),
                  tokenizer=str(model))
    plain = [sys.executable, "-c", PLAIN, json.dumps({"engine": engine, "prompts": prompts, "max_tokens": MAX_TOKENS})]
    on_baseline_run = [*suite, "--npuprec-reference", "baseline", "--npuprec-report-dir", str(work / "baseline")]
    plain_runs, suite_runs = [], []
    for _ in range(args.repeat):  # alternating, so a slow spell of the box hits both sides alike
        plain_runs.append(run(plain, env, work / "plain.log"))
        suite_runs.append(run(on_baseline_run, env, work / "baseline.log"))
    plain_s, suite_s = min(plain_runs), min(suite_runs)
    on_baseline = json.loads((work / "baseline" / f"{MODEL}.json").read_text())
    assert on_baseline["run"]["reference_source"]["source"] == "baseline", on_baseline["run"]["reference_source"]

    rows = sum(p["scored_positions"]["count"] for p in on_baseline["prompts"])
    baseline_bytes = sum(p.stat().st_size for p in (baselines / MODEL).rglob("*") if p.is_file())
    figures = {
        "suite_over_plain": round(suite_s / plain_s, 3),
        "baseline_bytes": baseline_bytes,
        "full_logits_bytes": rows * VOCAB * 4,
        "reference_s_live": live["run"]["timings"]["reference_s"],
        "reference_s_baseline": on_baseline["run"]["timings"]["reference_s"],
        "suite_s": round(suite_s, 2), "plain_s": round(plain_s, 2),
        "suite_runs_s": [round(t, 2) for t in suite_runs], "plain_runs_s": [round(t, 2) for t in plain_runs],
        "suite_device_s": on_baseline["run"]["timings"]["device_s"], "suite_total_s": on_baseline["run"]["timings"]["total_s"],
        "live_passed": live["passed"], "baseline_passed": on_baseline["passed"], "work": str(work),
    }
    print(f"wide stand-in: vocab {VOCAB}, {PROMPTS} prompts x {MAX_TOKENS} tokens, {rows} scored rows")
    print(f"  reference: live {figures['reference_s_live']} s, on the baseline {figures['reference_s_baseline']} s")
    print(f"  whole suite on the baseline {suite_s:.1f} s vs engine start + plain generation {plain_s:.1f} s "
          f"= {figures['suite_over_plain']}x")
    print(f"  baseline {baseline_bytes / 1e6:.2f} MB for {figures['full_logits_bytes'] / 1e6:.1f} MB of FP32 logits "
          f"(1/{figures['full_logits_bytes'] / baseline_bytes:.0f})")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
