"""Verdicts of the check kinds beyond metric thresholds: qat equivalence, ternary weights, determinism,
perplexity, labels, thinking. One signature, `judge_<kind>(check, measured)`: the kind's config and
what measure/kinds.py measured for it; the sentence is verdict.verdict's, the model name the caller's."""
from __future__ import annotations

import math

from ..config.schema import (
    DeterminismCheck,
    LabelCheck,
    PerplexityCheck,
    QatEquivalenceCheck,
    TernaryWeightsCheck,
    ThinkingCheck,
)
from ..measure.kinds import LabelPair, PerplexityMeasurement, RunDifference, TensorTernary, ThinkingMeasurement
from ..measure.thresholds import Measurements
from .layouts import judge_parallel_layouts
from .steps import judge_batch_invariance, judge_graph_mode, judge_prefix_cache
from .thresholds import judge_threshold
from .verdict import Verdict, clip, verdict

QAT_SUBJECT = "QAT fake-quant vs converted (FP32)"


def _clip(text: str, width: int = 60) -> str:
    return repr(clip(text, width))  # repr shows newlines and special tokens as they are


def judge_qat_equivalence(check: QatEquivalenceCheck, measured: Measurements) -> dict[str, Verdict]:
    """One verdict per threshold, `qat_equivalence-<threshold id>`: the QAT checkpoint's fake-quant forward
    (reference side) vs the converted checkpoint (device side), both transformers FP32 on the CPU."""
    verdicts = (judge_threshold(t, measured, check_id=f"qat_equivalence-{t.id}", subject=QAT_SUBJECT)
                for t in check.thresholds)
    return {v.check_id: v for v in verdicts}


def judge_ternary_weights(check: TernaryWeightsCheck, measured: list[TensorTernary]) -> Verdict:
    groups = "whole tensor" if check.group_size == -1 else f"groups of {check.group_size}"
    bound_text = f"scale x {{-1, 0, 1}} per {groups}"
    errors = [t for t in measured if t.error]
    bad = [t for t in measured if t.result is not None and not t.result.ternary]
    problems = []
    if not measured:
        problems.append(f"no tensor in the checkpoint matches include {check.include!r}"
                        + (f" / exclude {check.exclude!r}" if check.exclude else "")
                        + "; expected the quantized linear weights")
    if errors:
        problems.append(f"{len(errors)} tensor(s) cannot be grouped, first {errors[0].name} {list(errors[0].shape)}: "
                        f"{errors[0].error}")
    if bad:
        worst = max(bad, key=lambda t: t.result.worst_values)
        r = worst.result
        problems.append(f"{len(bad)} of {len(measured)} tensors are not ternary; worst {worst.name} "
                        f"{list(worst.shape)}: group {r.worst_group} holds {r.worst_values} distinct values "
                        f"({r.bad_groups} of {r.groups} groups bad; expected {{-s, 0, +s}})")
    return verdict(check_id="ternary_weights", what=f"ternary_weights ({bound_text}) on {len(measured)} tensors",
                   passed=not problems, details=problems, value=float(len(bad) + len(errors)) if measured else None,
                   value_of="tensors not ternary or not groupable", bound_text=bound_text,
                   n_values=len(measured), n_failing=len(bad) + len(errors))


def judge_determinism(check: DeterminismCheck, measured: list[RunDifference]) -> Verdict:
    bound = check.logits_bound
    logits = "identical" if check.max_abs_diff == 0 else bound.condition("max |diff|")
    worst = max((r.max_abs_diff for r in measured), key=lambda v: math.inf if math.isnan(v) else v, default=0.0)
    problems = []
    for r in measured:
        if r.token_mismatches:
            first = r.token_mismatches[0]
            problems.append(f"run {r.run} generated different tokens than run 1 on {len(r.token_mismatches)} "
                            f"prompt(s), first prompt {first.prompt_id} at token {first.step} "
                            f"({first.first} vs {first.again})")
        if math.isnan(r.max_abs_diff):
            problems.append(f"run {r.run} vs run 1: logits not finite (prompt {r.worst_prompt}); "
                            "NaN/Inf never count as identical")
        elif not bound.holds(r.max_abs_diff):
            problems.append(f"run {r.run} vs run 1: logits max |diff| {r.max_abs_diff:.6g} misses "
                            f"{bound.condition('max |diff|')} at prompt {r.worst_prompt} position {r.worst_position}")
    return verdict(check_id="determinism", what=f"determinism over {check.runs} device runs at temperature 0",
                   passed=not problems,
                   details=problems or [f"tokens identical, logits max |diff| {worst:.6g} "
                                        f"(bound {check.max_abs_diff:g})"],
                   value=worst, value_of="largest logits max |diff| of a repeat run vs run 1",
                   bound_text=f"{check.runs} runs: tokens identical, logits {logits}", n_values=len(measured),
                   n_failing=sum(1 for r in measured if r.token_mismatches or not bound.holds(r.max_abs_diff)))


def judge_perplexity(check: PerplexityCheck, measured: PerplexityMeasurement) -> Verdict:
    m = measured
    bound_text = f"ratio in [1/{check.max_ratio:g}, {check.max_ratio:g}]"
    finite = all(math.isfinite(v) for v in (m.reference, m.device)) and m.reference > 0
    ratio = m.ratio if finite else float("nan")
    passed = finite and max(ratio, 1 / ratio) <= check.max_ratio
    figures = (f"device {m.device:.6g} / reference {m.reference:.6g} over {m.tokens} tokens = ratio "
               f"{ratio:.6g}" if finite else f"device {m.device} / reference {m.reference}: not finite")
    return verdict(check_id="perplexity", what=f"perplexity of {_clip(check.text, 40)}: {figures}, bound {bound_text}",
                   passed=passed, value=ratio, value_of="perplexity ratio device / reference", bound_text=bound_text,
                   n_values=m.tokens, n_failing=0 if passed else 1)


def judge_labels(check: LabelCheck, measured: list[LabelPair]) -> Verdict:
    pattern = check.pattern
    unlabeled = [p for p in measured if p.reference is None]
    differ = [p for p in measured if p.reference is not None and p.device != p.reference]
    problems = []
    if unlabeled:
        p = unlabeled[0]
        problems.append(f"{len(unlabeled)} reference output(s) have no label matching {pattern!r} (the pattern or "
                        f"the model is wrong; first: prompt {p.prompt_id}: {_clip(p.reference_text)})")
    if differ:
        p = differ[0]
        problems.append(f"{len(differ)} device label(s) differ, first prompt {p.prompt_id}: device "
                        f"{p.device!r} vs reference {p.reference!r} (device output {_clip(p.device_text)})")
    return _per_prompt("labels", f"labels ({pattern!r}) agree", len(measured), len(unlabeled) + len(differ),
                       problems, "every prompt: device label = reference label")


def judge_thinking(check: ThinkingCheck, measured: ThinkingMeasurement) -> Verdict:
    pairs = measured.pairs
    expected = "none" if measured.enable_thinking is False else "closed"
    want = ("no thinking section (enable_thinking: false)" if expected == "none"
            else f"a closed {check.open}...{check.close} section, then the answer")
    bad_reference = [p for p in pairs if p.reference.state != expected]
    bad_device = [p for p in pairs if p not in bad_reference and p.device.state != p.reference.state]
    answer_differs = [p for p in pairs if check.compare_answer and p not in bad_reference and p not in bad_device
                      and not _same_answer(p.device.answer, p.reference.answer)]
    problems = []
    if bad_reference:
        p = bad_reference[0]
        problems.append(f"{len(bad_reference)} reference output(s) do not show {want} (first: prompt "
                        f"{p.prompt_id}: {p.reference.state}; raise max_tokens or check the chat template)")
    if bad_device:
        p = bad_device[0]
        problems.append(f"{len(bad_device)} device output(s) differ in thinking structure, first prompt "
                        f"{p.prompt_id}: device {p.device.state} vs reference {p.reference.state} "
                        f"(device thinking {_clip(p.device.thinking)})")
    if answer_differs:
        p = answer_differs[0]
        empty = [side for side, split in (("device", p.device), ("reference", p.reference)) if not split.answer]
        why = (f" ({' and '.join(empty)} answer empty after {check.close}: an empty answer matches nothing; raise "
               "max_tokens if the output was cut off there)" if empty else "")
        problems.append(f"{len(answer_differs)} answer(s) after the thinking section differ, first prompt "
                        f"{p.prompt_id}: device {_clip(p.device.answer)} vs reference {_clip(p.reference.answer)}"
                        + why)
    n_bad = len(bad_reference) + len(bad_device) + len(answer_differs)
    return _per_prompt("thinking", f"thinking ({want}) agrees", len(pairs), n_bad, problems, f"every prompt: {want}")


def _per_prompt(check_id: str, what: str, n: int, n_bad: int, problems: list[str], bound_text: str) -> Verdict:
    """A check that must hold on every selected prompt: passed only without problems (and with prompts)."""
    if not n:
        problems = ["no prompt selected", *problems]
    return verdict(check_id=check_id, what=f"{what} on {n - n_bad}/{n} prompts", passed=not problems, details=problems,
                   value=(n - n_bad) / n if n else float("nan"), value_of=f"share of prompts whose {check_id} agree",
                   bound_text=bound_text, n_values=n, n_failing=n_bad)


def _same_answer(device: str, reference: str) -> bool:
    """Equal up to the shorter one: max_tokens may cut either answer off. An empty answer compared nothing, so
    it matches nothing (not even another empty one)."""
    if not device or not reference:
        return False
    n = min(len(device), len(reference))
    return device[:n] == reference[:n]


# check kind -> its judge, called as judge(check, measured); qat_equivalence gives one verdict per threshold
JUDGES = {
    "ternary_weights": judge_ternary_weights,
    "determinism": judge_determinism,
    "perplexity": judge_perplexity,
    "labels": judge_labels,
    "thinking": judge_thinking,
    "batch_invariance": judge_batch_invariance,
    "graph_mode": judge_graph_mode,
    "prefix_cache": judge_prefix_cache,
    "parallel_layouts": judge_parallel_layouts,
}
