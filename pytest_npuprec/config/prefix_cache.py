"""precision.checks.prefix_cache: parsed with the other check kinds; its default bound and the engine setting it
needs are settled against the rest of the config (serve:, the thresholds) once both are read."""
from __future__ import annotations

import dataclasses
from typing import Any

from .reader import Reader
from .schema import PrecisionConfig, PrefixCacheCheck, ServeConfig, Threshold

KEY = "precision.checks.prefix_cache"


def parse_prefix_cache(r: Reader, raw: Any, key: str, prompt_ids: tuple[str, ...] | None,
                       max_abs_diff: float | None, thresholds: tuple[Threshold, ...] | None) -> PrefixCacheCheck:
    prefix = raw.get("prefix")
    if prefix is not None and not r.typed(prefix, f"{key}.prefix", str).strip():
        raise r.fail(f"{key}.prefix", "empty; expected some text (or leave it out for the built-in one)")
    return PrefixCacheCheck(prefix_tokens=r.positive_int(raw.get("prefix_tokens", PrefixCacheCheck.prefix_tokens),
                                                         f"{key}.prefix_tokens"),
                            prefix=prefix, prompts=prompt_ids, max_abs_diff=max_abs_diff, thresholds=thresholds)


def settle_prefix_cache(r: Reader, precision: PrecisionConfig, serve: ServeConfig) -> PrecisionConfig:
    """The check's max_abs_diff defaults to the model's own max_abs_diff bound (its calibrated BF16 floor), its
    warm-vs-reference thresholds to the model's (its own `thresholds:` replace those of the metrics they name); a
    config that turns prefix caching off, or leaves no room for the prefix, cannot run it."""
    check = precision.checks.prefix_cache
    if check is None:
        return precision
    if not precision.thresholds:  # only a calibration loads a config without bounds: it writes them, judges nothing
        return dataclasses.replace(precision, checks=dataclasses.replace(precision.checks, prefix_cache=None))
    if serve.extra.get("enable_prefix_caching") is False:
        source = serve.sources.get("enable_prefix_caching", "serve.enable_prefix_caching")
        raise r.fail(KEY, f"needs prefix caching, but {source} is false; expected {source} true (or left out: the "
                          "engine's default) or no prefix_cache check")
    if precision.reference_scoring != "reference":
        raise r.fail(KEY, "its prompts are scored on the reference's greedy continuation; expected "
                          "precision.reference_scoring: reference (the default) or no prefix_cache check")
    need = check.prefix_tokens + 1 + precision.max_tokens
    if need > serve.max_model_len:
        raise r.fail(f"{KEY}.prefix_tokens", f"{check.prefix_tokens} prefix tokens + a prompt + max_tokens "
                                             f"{precision.max_tokens} >= {need} exceeds serve.max_model_len "
                                             f"{serve.max_model_len}; expected a shorter prefix")
    if check.max_abs_diff is None:
        bounds = [t.value for t in precision.thresholds if t.metric == "max_abs_diff" and t.bound == "max"]
        if not bounds:
            raise r.fail(f"{KEY}.max_abs_diff", "missing, and precision.thresholds has no max_abs_diff bound to take "
                                                "it from; expected a number (warm vs cold logits, max |diff|)")
        check = dataclasses.replace(check, max_abs_diff=max(bounds))
    # its own bounds replace the model's bounds of the metrics they name; the model's others apply as they are
    own = check.thresholds or ()
    named = {t.metric for t in own}
    check = dataclasses.replace(check, thresholds=tuple(t for t in precision.thresholds if t.metric not in named) + own)
    checks = dataclasses.replace(precision.checks, prefix_cache=check)
    return dataclasses.replace(precision, checks=checks)
