"""Layer by layer: where inside the model the device left the reference (issue 21).

When a model fails a logit check (or with `--npuprec-diagnose always`), its worst prompt (the prompt of the worst
value of the failing logit check that misses its bound by the most, else of the largest KL) is scored again on
three sides with the layers tap: transformers FP32 (the reference), transformers BF16 (the floor) and the device
in an eager engine (module hooks do not run in a compiled graph), with the session's fault if any. Per decoder
layer the residual stream and the attention and MLP outputs are compared (measure/layers.py; a MoE layer's router
logits and chosen experts too), and per vision block of a vision-language model's tower its hidden state and
attention and MLP outputs; the first vision block, else decoder layer, that leaves its floor is named, with its
block: attention, mlp, or in a MoE layer router or experts (verdicts/layers.py). A diagnosis that cannot run says
why in the report; it never changes the model's verdicts.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .capture.diagnosis import capture_layers
from .capture.records import ModelCapture, PromptCapture
from .config.schema import ModelConfig
from .errors import describe
from .measure.layers import load_layers, measure_layers, measure_vision
from .measure.thresholds import Measurements
from .metrics.registry import METRICS, ROUTING_METRICS
from .verdicts import Verdict
from .verdicts.layers import RULE, judge_layers

if TYPE_CHECKING:
    from .orchestrate import RunOptions

FLOOR_DTYPE = "bfloat16"
# metrics judged on the logits rows (not the token or routing checks)
LOGIT_METRICS = frozenset(m for m, spec in METRICS.items() if spec.per == "position" and m not in ROUTING_METRICS)


def _miss(verdict: Verdict) -> float:
    """By how much the worst value misses the bound (> 1: misses; inf: not finite)."""
    t, worst = verdict.threshold, (verdict.worst or {}).get("value")
    if t is None or worst is None or not math.isfinite(worst):
        return math.inf
    if METRICS[t.metric].better == "higher":
        return (1.0 - worst) / max(1.0 - t.value, 1e-12)
    return worst / max(t.value, 1e-12)


def failing_logit_checks(verdicts: dict[str, Verdict]) -> list[Verdict]:
    return [v for v in verdicts.values() if not v.passed and (v.threshold is None and v.check_id == "finite_logits"
                                                               or v.threshold is not None
                                                               and v.threshold.metric in LOGIT_METRICS)]


def worst_prompt(verdicts: dict[str, Verdict], measured: Measurements) -> tuple[int, str] | None:
    """(prompt index, why) of the prompt to diagnose; None when there is none (no scored positions)."""
    failing = [v for v in failing_logit_checks(verdicts) if (v.worst or {}).get("prompt_index") is not None]
    if failing:
        v = max(failing, key=_miss)
        return int(v.worst["prompt_index"]), (f"the worst value of the failing check {v.check_id} "
                                              f"({v.worst.get('value', float('nan')):.6g} at position "
                                              f"{v.worst.get('position')})")
    kl = measured.cells.get("kl_divergence")
    if kl is None or len(kl.values) == 0:
        return None
    i = int(max(range(len(kl.values)), key=lambda k: math.inf if math.isnan(kl.values[k]) else kl.values[k]))
    return int(kl.prompt[i]), f"the largest KL ({kl.values[i]:.3g} at position {int(kl.position[i])})"


def wanted(mode: str, verdicts: dict[str, Verdict]) -> bool:
    return mode == "always" or (mode == "auto" and bool(failing_logit_checks(verdicts)))


def diagnose(config: ModelConfig, options: "RunOptions", model_path: Path, capture: ModelCapture,
             measured: Measurements, verdicts: dict[str, Verdict],
             device_engine: Callable[[Any], Callable[[], Any]],
             images: Mapping[int, tuple[Any, ...]] | None = None) -> dict[str, Any] | None:
    """The report's `diagnosis` section, or None when none is wanted. `device_engine(serve)` makes the device
    engine's factory for a serve config (the session's fault included); `images`: prompt index -> its images (a
    capture read back from disk holds their digests only)."""
    if not wanted(options.diagnose, verdicts):
        return None
    started = time.perf_counter()
    picked = worst_prompt(verdicts, measured)
    if picked is None:
        return {"error": "no scored positions: no prompt to diagnose"}
    index, why = picked
    record = next(p for p in capture.compared() if p.prompt.index == index)
    section: dict[str, Any] = {"prompt_index": index, "prompt_id": record.prompt.id, "prompt": record.prompt.label,
                               "why": why, "positions": len(record.positions), "rule": RULE}
    try:
        section.update(_run(config, options, model_path, record, device_engine, (images or {}).get(index, ())))
    except Exception as exc:  # the model's verdicts stand; the report says why there is no diagnosis
        section["error"] = describe(exc)
    section["seconds"] = round(time.perf_counter() - started, 2)
    return section


def _run(config: ModelConfig, options: "RunOptions", model_path: Path, record: PromptCapture,
         device_engine: Callable[[Any], Callable[[], Any]], images: tuple[Any, ...]) -> dict[str, Any]:
    from .runners.reference import TransformersRunner

    if record.prompt.media_positions and not images:
        raise ValueError(f"prompt {record.prompt.id} has image placeholders but its images are not at hand; the "
                         "diagnosis cannot rerun it")
    trust = config.serve.trust_remote_code
    runners = {
        "reference": lambda: TransformersRunner(model_path, trust),
        "floor": lambda: TransformersRunner(model_path, trust, dtype=FLOOR_DTYPE),
        "device": device_engine(dataclasses.replace(config.serve, enforce_eager=True)),
    }
    layers = capture_layers(record.scored, record.positions, runners,
                            options.report_dir / "captures" / f"{config.name}-diagnosis", images)
    arrays = {side: load_layers(path) for side, path in layers.layers.items()}
    rows = measure_layers(arrays["device"], arrays["reference"], arrays["floor"])
    vision = measure_vision(arrays["device"], arrays["reference"], arrays["floor"])
    judged = judge_layers(rows, vision)
    section = {
        "where": judged.where,
        "first_divergent_layer": judged.first_divergent_layer,
        "block": judged.block,
        "message": judged.message,
        "device": {"engine": "vLLM, enforce_eager", "fault": layers.info["device"].get("fault")},
        "floor": f"transformers {FLOOR_DTYPE} vs the FP32 reference",
        "layers": [_entry("layer", row, j) for row, j in zip(rows, judged.judged)],
        "capture": str(layers.folder),
        "side_seconds": layers.seconds,
    }
    if vision:
        section.update(first_divergent_vision_block=judged.first_divergent_vision_block,
                       vision_blocks=[_entry("block", row, j) for row, j in zip(vision, judged.vision_judged)])
    return section


def _entry(name: str, row: Any, judged: Any) -> dict[str, Any]:
    """One decoder layer (name "layer") or vision block ("block"): per kind both comparisons, diverged, floor_ratio;
    a MoE layer's routes."""
    entry = {name: row.layer, **({"moe": row.moe} if name == "layer" else {}),
             **{kind: {"device": row.device[kind], "floor": row.floor[kind], "diverged": judged.diverged[kind],
                       "floor_ratio": judged.ratio[kind]} for kind in row.device}}
    if row.routes is not None:
        entry["router"]["routes"] = row.routes
    return entry
