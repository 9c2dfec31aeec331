"""The prefix_cache check's prompts and its warm pass.

Each selected prompt is put after one long shared prefix. Both sides generate and score these like any prompt
(the device's main scoring is cold: every request of the suite carries a cache salt of its own, so nothing is
reused); then the device computes the shared prefix once more under one salt and scores every prompt again under
that salt: their prefix's KV blocks come from the cache, and the prefill computes only what follows (the
cross-request state path of vllm-ascend #1678). Those are the "warm" logits.
"""
from __future__ import annotations

import os
from typing import Any

from ..config.schema import ModelConfig
from ..errors import NpuprecError
from ..runners.scoring import ScoreRequest
from .lengths import FIXED_TEXT
from .records import PromptInput

WARM = "device-warm"  # the logits side of the warm pass
KEY = "precision.checks.prefix_cache"


class PrefixCacheError(NpuprecError, ValueError):
    pass


def prefix_cache_inputs(config: ModelConfig, tokenizer: Any, prompts: list[PromptInput],
                        first_index: int) -> list[PromptInput]:
    """One input per selected prompt (id `prefix-<prompt id>`): the shared prefix's ids (BOS included, cut to
    exactly prefix_tokens), then the prompt's ids without its BOS."""
    check = config.checks.prefix_cache
    if check is None:
        return []
    text = check.prefix or FIXED_TEXT
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    while len(ids) < check.prefix_tokens:
        text += " " + (check.prefix or FIXED_TEXT)
        longer = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if len(longer) <= len(ids):
            raise PrefixCacheError(f"{config.path}: {KEY}.prefix: does not grow when repeated; expected some text")
        ids = longer
    prefix = tuple(ids[: check.prefix_tokens])
    bos = getattr(tokenizer, "bos_token_id", None)
    chosen = [p for p in prompts if p.kind == "compare" and (check.prompts is None or p.id in check.prompts)]
    out, seen = [], set()
    for p in chosen:
        suffix = p.token_ids[1:] if bos is not None and p.token_ids[:1] == (bos,) else p.token_ids
        tokens = prefix + suffix
        if not suffix or tokens in seen:
            continue  # the same sequence twice would share its own blocks; a prompt of only BOS adds nothing
        seen.add(tokens)
        if len(tokens) + config.precision.max_tokens > config.serve.max_model_len:
            raise PrefixCacheError(f"{config.path}: {KEY}: prompt {p.id!r} after {check.prefix_tokens} prefix tokens: "
                                   f"{len(tokens)} tokens + max_tokens {config.precision.max_tokens} exceed "
                                   f"serve.max_model_len {config.serve.max_model_len}; expected a shorter prefix")
        out.append(PromptInput(index=first_index + len(out), id=f"prefix-{p.id}",
                               label=f"{check.prefix_tokens} shared tokens + {p.label}", token_ids=tokens,
                               kind="prefix_cache"))
    if not out:
        raise PrefixCacheError(f"{config.path}: {KEY}: no prompt to put after the prefix; expected prompt ids with "
                               "text beyond the BOS token")
    return out


def shared_prefix(inputs: list[PromptInput]) -> tuple[int, ...]:
    """What every input starts with, one token short of the shortest: the part the warm pass primes the cache with
    (every scored position lies after it, so each is computed by a forward pass)."""
    first = inputs[0].token_ids
    n = min(len(p.token_ids) for p in inputs) - 1
    for p in inputs[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], p.token_ids)) if a != b), n)
    return first[:n]


def warm_pass(dev: Any, inputs: list[PromptInput], warm: list[ScoreRequest]) -> dict[str, Any]:
    """Prime the cache with the shared prefix under one salt, then score every input (`warm`: their requests,
    writing side WARM) under that salt. Returns the primed length and what the engine reused per input
    (`cached_tokens`: prompt tokens read from the cache)."""
    prefix = shared_prefix(inputs)
    salt = f"npuprec-prefix-{os.urandom(8).hex()}"
    dev.generate([prefix], 1, cache_salt=salt)
    cached = dev.score(warm, cache_salt=salt)
    return {"prefix_tokens": len(prefix), "cached_tokens": {p.id: n for p, n in zip(inputs, cached)}}
