"""Verdicts of the check kinds beyond metric thresholds: determinism, perplexity, labels, thinking,
ternary weights. (QAT equivalence is judged by metric thresholds on its own capture.)"""
from __future__ import annotations

import math

from ..config.schema import DeterminismCheck, PerplexityCheck, TernaryWeightsCheck, ThinkingCheck
from ..measure.kinds import LabelPair, PerplexityMeasurement, RunDifference, TensorTernary, ThinkingPair
from .verdict import Verdict, clip


def _clip(text: str, width: int = 60) -> str:
    return repr(clip(text, width))  # repr shows newlines and special tokens as they are


def judge_determinism(model: str, check: DeterminismCheck, runs: list[RunDifference]) -> Verdict:
    bound = "identical" if check.max_abs_diff == 0 else f"max |diff| <= {check.max_abs_diff:g}"
    bound_text = f"{check.runs} runs: tokens identical, logits {bound}"
    problems = []
    worst = max((r.max_abs_diff for r in runs), key=lambda v: math.inf if math.isnan(v) else v, default=0.0)
    for r in runs:
        if r.token_mismatches:
            pid, step, a, b = r.token_mismatches[0]
            problems.append(f"run {r.run} generated different tokens than run 1 on {len(r.token_mismatches)} "
                            f"prompt(s), first prompt {pid} at token {step} ({a} vs {b})")
        if math.isnan(r.max_abs_diff):
            problems.append(f"run {r.run} vs run 1: logits not finite (prompt {r.worst_prompt}); "
                            "NaN/Inf never count as identical")
        elif r.max_abs_diff > check.max_abs_diff:
            problems.append(f"run {r.run} vs run 1: logits max |diff| {r.max_abs_diff:.6g} > {check.max_abs_diff:g} "
                            f"at prompt {r.worst_prompt} position {r.worst_position}")
    passed = not problems
    summary = f"{model}: determinism over {check.runs} device runs at temperature 0: "
    message = summary + ("passed: tokens identical, logits max |diff| "
                         f"{worst:.6g} (bound {check.max_abs_diff:g})" if passed else "FAILED: " + "; ".join(problems))
    return Verdict(model, "determinism", passed, worst, None, message, n_values=len(runs),
                   n_failing=sum(1 for r in runs if r.token_mismatches or not r.max_abs_diff <= check.max_abs_diff),
                   bound_text=bound_text)


def judge_perplexity(model: str, check: PerplexityCheck, m: PerplexityMeasurement) -> Verdict:
    ratio = m.ratio
    bound_text = f"ratio in [1/{check.max_ratio:g}, {check.max_ratio:g}]"
    finite = all(math.isfinite(v) for v in (m.reference, m.device)) and m.reference > 0
    passed = finite and max(ratio, 1 / ratio) <= check.max_ratio
    figures = (f"device {m.device:.6g} / reference {m.reference:.6g} over {m.tokens} tokens = ratio "
               f"{ratio:.6g}" if finite else f"device {m.device} / reference {m.reference}: not finite")
    message = (f"{model}: perplexity of {_clip(check.text, 40)}: {figures}, bound {bound_text}: "
               f"{'passed' if passed else 'FAILED'}")
    return Verdict(model, "perplexity", passed, ratio if finite else float("nan"), None, message,
                   n_values=m.tokens, n_failing=0 if passed else 1, bound_text=bound_text)


def judge_labels(model: str, pattern: str, pairs: list[LabelPair]) -> Verdict:
    unlabeled = [p for p in pairs if p.reference is None]
    differ = [p for p in pairs if p.reference is not None and p.device != p.reference]
    agree = len(pairs) - len(unlabeled) - len(differ)
    bound_text = "every prompt: device label = reference label"
    problems = []
    if unlabeled:
        p = unlabeled[0]
        problems.append(f"{len(unlabeled)} reference output(s) have no label matching {pattern!r} (the pattern or "
                        f"the model is wrong; first: prompt {p.prompt_id}: {_clip(p.reference_text)})")
    if differ:
        p = differ[0]
        problems.append(f"{len(differ)} device label(s) differ, first prompt {p.prompt_id}: device "
                        f"{p.device!r} vs reference {p.reference!r} (device output {_clip(p.device_text)})")
    return _per_prompt_verdict(model, "labels", f"labels ({pattern!r}) agree", len(pairs), len(pairs) - agree,
                               problems, bound_text)


def _per_prompt_verdict(model: str, check_id: str, what: str, n: int, n_bad: int, problems: list[str],
                        bound_text: str) -> Verdict:
    """A check that must hold on every selected prompt: passed only without problems (and prompts)."""
    if not n:
        problems = ["no prompt selected", *problems]
    passed = not problems
    message = f"{model}: {what} on {n - n_bad}/{n} prompts: " + ("passed" if passed else "FAILED: " + "; ".join(problems))
    return Verdict(model, check_id, passed, (n - n_bad) / n if n else float("nan"), None, message,
                   n_values=n, n_failing=n_bad, bound_text=bound_text)


def judge_thinking(model: str, check: ThinkingCheck, enable_thinking: bool | None,
                   pairs: list[ThinkingPair]) -> Verdict:
    expected = "none" if enable_thinking is False else "closed"
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
        problems.append(f"{len(answer_differs)} answer(s) after the thinking section differ, first prompt "
                        f"{p.prompt_id}: device {_clip(p.device.answer)} vs reference {_clip(p.reference.answer)}")
    n_bad = len(bad_reference) + len(bad_device) + len(answer_differs)
    return _per_prompt_verdict(model, "thinking", f"thinking ({want}) agrees", len(pairs), n_bad, problems,
                               f"every prompt: {want}")


def _same_answer(device: str, reference: str) -> bool:
    """Equal up to the shorter one: max_tokens may cut either answer off."""
    n = min(len(device), len(reference))
    return device[:n] == reference[:n]


def judge_ternary(model: str, check: TernaryWeightsCheck, tensors: list[TensorTernary]) -> Verdict:
    groups = "whole tensor" if check.group_size == -1 else f"groups of {check.group_size}"
    bound_text = f"scale x {{-1, 0, 1}} per {groups}"
    if not tensors:
        return Verdict(model, "ternary_weights", False, None, None,
                       f"{model}: ternary_weights: no tensor in the checkpoint matches include {check.include!r}"
                       + (f" / exclude {check.exclude!r}" if check.exclude else "")
                       + "; expected the quantized linear weights", bound_text=bound_text)
    errors = [t for t in tensors if t.error]
    bad = [t for t in tensors if t.result is not None and not t.result.ternary]
    problems = []
    if errors:
        problems.append(f"{len(errors)} tensor(s) cannot be grouped, first {errors[0].name} {list(errors[0].shape)}: "
                        f"{errors[0].error}")
    if bad:
        worst = max(bad, key=lambda t: t.result.worst_values)
        r = worst.result
        problems.append(f"{len(bad)} of {len(tensors)} tensors are not ternary; worst {worst.name} "
                        f"{list(worst.shape)}: group {r.worst_group} holds {r.worst_values} distinct values "
                        f"({r.bad_groups} of {r.groups} groups bad; expected {{-s, 0, +s}})")
    passed = not problems
    message = (f"{model}: ternary_weights ({bound_text}) on {len(tensors)} tensors: "
               + ("passed" if passed else "FAILED: " + "; ".join(problems)))
    return Verdict(model, "ternary_weights", passed, float(len(bad) + len(errors)), None, message,
                   n_values=len(tensors), n_failing=len(bad) + len(errors), bound_text=bound_text)
