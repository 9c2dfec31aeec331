"""precision.checks: the check kinds beyond metric thresholds, validated like the rest of the YAML."""
from __future__ import annotations

import math
import re
from typing import Any

from .layouts import parse_parallel_layouts
from .prefix_cache import parse_prefix_cache
from .reader import Reader
from .schema import (
    CHECK_KINDS,
    BatchInvarianceCheck,
    ChecksConfig,
    DeterminismCheck,
    GraphModeCheck,
    LabelCheck,
    ParallelLayoutsCheck,
    PerplexityCheck,
    PrefixCacheCheck,
    Prompt,
    QatEquivalenceCheck,
    TernaryWeightsCheck,
    ThinkingCheck,
)
from .thresholds import parse_thresholds

KEY = "precision.checks"


def parse_checks(r: Reader, raw: Any, prompts: tuple[Prompt, ...]) -> ChecksConfig:
    if raw is None:
        return ChecksConfig()
    r.mapping(raw, KEY, frozenset(CHECK_KINDS))
    parsers = {
        "determinism": _determinism, "perplexity": _perplexity, "labels": _labels, "thinking": _thinking,
        "ternary_weights": _ternary, "qat_equivalence": _qat, "batch_invariance": _batch_invariance,
        "graph_mode": _graph_mode, "prefix_cache": _prefix_cache, "parallel_layouts": _parallel_layouts,
    }
    parsed = {}
    for name, value in raw.items():
        key = f"{KEY}.{name}"
        parsed[name] = parsers[name](r, {} if value is None else value, key, prompts)
    return ChecksConfig(**parsed)


def _number(r: Reader, raw: dict, key: str, name: str, default: float | None, minimum: float) -> float:
    if name not in raw:
        if default is None:
            raise r.fail(f"{key}.{name}", "missing; expected a number")
        return default
    value = float(r.typed(raw[name], f"{key}.{name}", float, int))
    if math.isnan(value) or value < minimum:
        raise r.fail(f"{key}.{name}", f"expected a number >= {minimum:g}, got {raw[name]!r}")
    return value


def _text(r: Reader, raw: dict, key: str, name: str, default: str | None = None) -> str:
    if name not in raw:
        if default is None:
            raise r.fail(f"{key}.{name}", "missing; expected a string")
        return default
    value = r.typed(raw[name], f"{key}.{name}", str)
    if not value.strip():
        raise r.fail(f"{key}.{name}", "empty; expected some text")
    return value


def _regex(r: Reader, raw: dict, key: str, name: str, default: str | None = None) -> str:
    pattern = _text(r, raw, key, name, default)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise r.fail(f"{key}.{name}", f"not a valid regular expression ({exc}): {pattern!r}") from None
    return pattern


def _prompt_ids(r: Reader, raw: dict, key: str, prompts: tuple[Prompt, ...]) -> tuple[str, ...] | None:
    if "prompts" not in raw:
        return None
    ids = r.typed(raw["prompts"], f"{key}.prompts", list)
    if not ids:
        raise r.fail(f"{key}.prompts", "empty; expected prompt ids from precision.prompts (or leave it out)")
    known = [p.id for p in prompts]
    for i, pid in enumerate(ids):
        if str(pid) not in known:
            raise r.fail(f"{key}.prompts[{i}]", f"unknown prompt id {pid!r}; expected one of: {', '.join(known)}")
    return tuple(str(pid) for pid in ids)


def _determinism(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> DeterminismCheck:
    r.mapping(raw, key, frozenset({"runs", "max_abs_diff"}))
    runs = r.positive_int(raw.get("runs", 2), f"{key}.runs")
    if runs < 2:
        raise r.fail(f"{key}.runs", f"expected at least 2 runs to compare, got {runs}")
    return DeterminismCheck(runs=runs, max_abs_diff=_number(r, raw, key, "max_abs_diff", 0.0, 0.0))


def _perplexity(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> PerplexityCheck:
    r.mapping(raw, key, frozenset({"text", "max_ratio"}))
    return PerplexityCheck(text=_text(r, raw, key, "text"),
                           max_ratio=_number(r, raw, key, "max_ratio", None, 1.0))


def _labels(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> LabelCheck:
    r.mapping(raw, key, frozenset({"pattern", "prompts"}))
    return LabelCheck(pattern=_regex(r, raw, key, "pattern"), prompts=_prompt_ids(r, raw, key, prompts))


def _thinking(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> ThinkingCheck:
    r.mapping(raw, key, frozenset({"open", "close", "prompts", "compare_answer"}))
    selected = _prompt_ids(r, raw, key, prompts)
    if selected is None and not any(p.messages for p in prompts):
        raise r.fail(f"{key}.prompts", "no prompt is given as messages; expected chat prompts or a list of "
                                       "prompt ids to check")
    return ThinkingCheck(open=_text(r, raw, key, "open", "<think>"), close=_text(r, raw, key, "close", "</think>"),
                         prompts=selected,
                         compare_answer=r.typed(raw.get("compare_answer", True), f"{key}.compare_answer", bool))


def _group_size(r: Reader, raw: dict, key: str) -> int:
    value = r.typed(raw.get("group_size", -1), f"{key}.group_size", int)
    if value != -1 and value < 1:
        raise r.fail(f"{key}.group_size", f"expected a positive group size or -1 (whole tensor), got {value}")
    return value


def _ternary(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> TernaryWeightsCheck:
    r.mapping(raw, key, frozenset({"group_size", "include", "exclude"}))
    default = TernaryWeightsCheck()
    return TernaryWeightsCheck(group_size=_group_size(r, raw, key),
                               include=_regex(r, raw, key, "include", default.include),
                               exclude=_regex(r, raw, key, "exclude") if "exclude" in raw else None)


def _qat(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> QatEquivalenceCheck:
    r.mapping(raw, key, frozenset({"converter", "group_size", "thresholds"}))
    if "converter" not in raw:
        raise r.fail(f"{key}.converter", "missing; expected 'package.module:function' or a command list "
                                         "with {input} and {output}")
    converter = raw["converter"]
    if isinstance(converter, list):
        argv = tuple(str(r.typed(a, f"{key}.converter[{i}]", str, int)) for i, a in enumerate(converter))
        if not argv or not any("{input}" in a for a in argv) or not any("{output}" in a for a in argv):
            raise r.fail(f"{key}.converter", "a command must contain {input} and {output} placeholders")
        converter = argv
    else:
        r.typed(converter, f"{key}.converter", str)
        if not re.fullmatch(r"[\w.]+:\w+", converter):
            raise r.fail(f"{key}.converter", f"expected 'package.module:function', got {converter!r}")
    if "thresholds" not in raw:
        raise r.fail(f"{key}.thresholds", "missing; expected bounds such as {cosine_similarity: {min: 0.9999}}")
    return QatEquivalenceCheck(converter=converter, group_size=_group_size(r, raw, key),
                               thresholds=parse_thresholds(r, raw["thresholds"], f"{key}.thresholds"))


def _batch_invariance(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> BatchInvarianceCheck:
    r.mapping(raw, key, frozenset({"max_abs_diff"}))
    return BatchInvarianceCheck(max_abs_diff=_number(r, raw, key, "max_abs_diff", 0.0, 0.0))


def _graph_mode(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> GraphModeCheck:
    r.mapping(raw, key, frozenset({"max_abs_diff"}))
    return GraphModeCheck(max_abs_diff=_number(r, raw, key, "max_abs_diff", None, 0.0))


def _prefix_cache(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> PrefixCacheCheck:
    r.mapping(raw, key, frozenset({"prefix_tokens", "prefix", "prompts", "max_abs_diff", "thresholds"}))
    bound = _number(r, raw, key, "max_abs_diff", 0.0, 0.0) if "max_abs_diff" in raw else None
    thresholds = parse_thresholds(r, raw["thresholds"], f"{key}.thresholds") if "thresholds" in raw else None
    return parse_prefix_cache(r, raw, key, _prompt_ids(r, raw, key, prompts), bound, thresholds)


def _parallel_layouts(r: Reader, raw: Any, key: str, prompts: tuple[Prompt, ...]) -> ParallelLayoutsCheck:
    r.mapping(raw, key, frozenset({"layouts", "thresholds"}))
    thresholds = parse_thresholds(r, raw["thresholds"], f"{key}.thresholds") if "thresholds" in raw else None
    return parse_parallel_layouts(r, raw, key, thresholds)
