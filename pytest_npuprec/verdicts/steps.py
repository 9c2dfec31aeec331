"""Verdicts on the device's generation steps: decode rows against the reference's bounds, the step-agreement
check kinds (batch_invariance, graph_mode), `judge_<kind>(check, measured)`, and prefix_cache (the warm pass
against the cold one and the reference)."""
from __future__ import annotations

import math

from ..config.schema import PrefixCacheCheck, StepAgreementCheck, Threshold
from ..measure.prefix_cache import PrefixCacheMeasurement
from ..measure.steps import StepDifference
from ..metrics.registry import METRICS
from ..measure.thresholds import Measurements
from .thresholds import judge_threshold
from .verdict import Verdict, verdict

DECODE_SUBJECT = "decode steps (the device's own generation) vs reference"


def judge_decode(thresholds: tuple[Threshold, ...], measured: Measurements) -> dict[str, Verdict]:
    return {t.id: judge_threshold(t, measured, subject=DECODE_SUBJECT) for t in thresholds}


def _judge_steps(check_id: str, what: str, check: StepAgreementCheck, measured: list[StepDifference],
                 against: str) -> Verdict:
    bound = check.logits_bound
    logits = "identical" if check.max_abs_diff == 0 else bound.condition("max |diff|")
    problems, figures = [], []
    for d in measured:
        where = f"prompt {d.worst_prompt} position {d.worst_position}"
        if d.rows == 0:
            problems.append(f"{d.name}: no step rows to compare")
        elif math.isnan(d.max_abs_diff):
            problems.append(f"{d.name}: logits not finite (prompt {d.worst_prompt}); NaN/Inf never agree")
        elif not bound.holds(d.max_abs_diff):
            problems.append(f"{d.name} vs {against}: logits max |diff| {d.max_abs_diff:.6g} misses "
                            f"{bound.condition('max |diff|')} at {where} ({d.rows} rows)")
        figures.append(f"{d.name}: max |diff| {d.max_abs_diff:.6g} over {d.rows} rows"
                       + (f", tokens differ on {len(d.token_mismatches)} prompt(s) (first {d.token_mismatches[0][0]} "
                          f"at token {d.token_mismatches[0][1]}; rows after it not compared)"
                          if d.token_mismatches else ""))
    worst = max((d.max_abs_diff for d in measured), key=lambda v: math.inf if math.isnan(v) else v, default=0.0)
    return verdict(check_id=check_id, what=what, passed=not problems, details=problems + figures if problems
                   else figures, value=worst, value_of="largest step logits max |diff|",
                   bound_text=f"step logits {logits}", n_values=sum(d.rows for d in measured),
                   n_failing=len([d for d in measured if d.rows == 0 or not bound.holds(d.max_abs_diff)]))


def judge_batch_invariance(check: StepAgreementCheck, measured: list[StepDifference]) -> Verdict:
    return _judge_steps("batch_invariance", "batch_invariance: each prompt alone and the batch reversed vs "
                        "the batch, step logits", check, measured, "batch")


def judge_graph_mode(check: StepAgreementCheck, measured: StepDifference) -> Verdict:
    return _judge_steps("graph_mode", "graph_mode: serve.enforce_eager flipped vs as configured, step logits",
                        check, [measured], "as configured")


def judge_prefix_cache(check: PrefixCacheCheck, measured: PrefixCacheMeasurement) -> Verdict:
    """Warm (the shared prefix read from the prefix cache) vs cold within check.max_abs_diff, and warm vs reference
    within check.thresholds (the model's, settled on load); a warm request that read nothing from the cache
    compared nothing."""
    m, bound = measured, check.warm_bound
    problems = []
    uncached = [pid for pid, n in m.cached_tokens.items() if n <= 0]
    if not m.cached_tokens or uncached:
        problems.append(f"{len(uncached) or 'every'} warm request(s) read no token from the prefix cache (first: "
                        f"{(uncached or ['-'])[0]}); is prefix caching off in this engine (serve.enable_prefix_caching, "
                        "or a platform that turns it off)?")
    if m.rows == 0:
        problems.append("no warm rows to compare")
    elif math.isnan(m.max_abs_diff):
        problems.append(f"warm or cold logits not finite (prompt {m.worst_prompt}); NaN/Inf never agree")
    elif not bound.holds(m.max_abs_diff):
        problems.append(f"warm vs cold: logits max |diff| {m.max_abs_diff:.6g} misses "
                        f"{bound.condition('max |diff|')} at prompt {m.worst_prompt} position {m.worst_position}")
    for t in check.thresholds or ():
        if METRICS[t.metric].per == "prompt":
            continue  # token checks: the warm pass scores, it does not generate
        judged = judge_threshold(t, m.against_reference, subject="warm vs reference")
        if not judged.passed:
            problems.append(judged.message)
    cached = ", ".join(f"{pid}: {n}" for pid, n in m.cached_tokens.items())
    figures = [f"warm vs cold max |diff| {m.max_abs_diff:.6g} over {m.rows} rows; prefix of {m.prefix_tokens} tokens; "
               f"tokens read from the cache: {cached or 'none'}"]
    return verdict(check_id="prefix_cache", what=f"prefix_cache: {len(m.cached_tokens)} prompts after a shared prefix, "
                   "scored warm (prefix from the cache) vs cold and vs reference", passed=not problems,
                   details=problems + figures, value=m.max_abs_diff, value_of="warm vs cold logits max |diff|",
                   bound_text=f"warm vs cold {bound.condition('max |diff|')}; warm vs reference: "
                   + ", ".join(t.condition() for t in check.thresholds or () if METRICS[t.metric].per == "position"),
                   n_values=m.rows, n_failing=len(problems))
