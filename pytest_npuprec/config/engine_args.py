"""serve: keys that are engine arguments, checked against the installed vLLM when a model runs.

vllm-ascend's configs carry whatever engine arguments a model needs (block_size, quantization,
additional_config, ...), and the set grows with vLLM. The loader passes unknown serve keys through;
this check, run lazily before the engine starts (never at collection, so `pytest --collect-only`
does not import vLLM), turns one the installed vLLM does not know into an error naming the file
and the key instead of a TypeError deep inside `LLM(...)`.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Iterable

from .reader import ConfigError
from .schema import ModelConfig

# set by the suite on every engine (runners/device.py), not by a config
SUITE_KWARGS = frozenset({"model", "tokenizer", "enable_prefix_caching", "worker_extension_cls"})


def installed_engine_fields() -> tuple[frozenset[str], str] | None:
    """(EngineArgs field names, vLLM version) of the installed vLLM, or None without vLLM."""
    try:
        import vllm
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return None
    return frozenset(f.name for f in dataclasses.fields(EngineArgs)), str(getattr(vllm, "__version__", "?"))


def check_engine_args(config: ModelConfig, fields: Iterable[str] | None = None, version: str = "?") -> None:
    """Raise ConfigError for the first serve key that is not an engine argument (`fields`: EngineArgs
    field names; default: the installed vLLM's, and nothing is checked when vLLM is not installed)."""
    if fields is None:
        found = installed_engine_fields()
        if found is None:
            return
        fields, version = found
    known = frozenset(fields)
    for key in config.serve.engine_kwargs():
        if key in known or key in SUITE_KWARGS:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(config.path, config.serve.sources.get(key, f"serve.{key}"),
                          f"{key!r} is not an engine argument of the installed vLLM {version}{hint}; expected "
                          f"one of the fields of vllm.engine.arg_utils.EngineArgs, or move it out of serve:")
