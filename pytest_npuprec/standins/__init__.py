"""Tiny, deterministic stand-in models built locally (no model hub, no network).

>>> from pytest_npuprec.standins import STANDINS, ensure_standin, cache_root
>>> path = ensure_standin("tiny-llama")   # builds on first use (~1 min), then cached

The folder loads offline with ``AutoTokenizer`` / ``AutoModelForCausalLM``
and with vLLM.  Importing this package is cheap: torch, transformers and
tokenizers are only imported when a build actually runs.

Layout: ``spec.py`` (what a builder spec is, its key) <- the builders (``llama``,
``qwen3``, ``minicpm``, ``bitcpm``, ``qat_convert``) <- ``registry.py`` (name ->
spec object) <- ``cache.py`` (shipped copy or build, dependencies first) <-
``ship.py``.  Nothing is imported the other way round.

Why this is a sub-package and not a sibling package (``npuprec_standins/``) of the
same distribution: a sibling in the same wheel ships the same 23 MB of weights and
installs the same way, so the move would buy a name, not a lighter plugin; the
plugin is already light with it (importing this package loads no torch,
transformers or tokenizers, about 0.1 s; weights are read only for a config that
names a ``stand_in:``; and nothing here imports the plugin except ``env_vars``,
``atomic`` and ``errors``, leaves that import only the standard library, which
tests/unit/test_standins.py checks); and it would break the converter command the
configs carry (``python -m pytest_npuprec.standins.qat_convert``) and every
``pytest_npuprec.standins`` import.  Leaving the weights out of an install pays
only as a separate distribution, which is a packaging decision of its own.
"""

from .cache import MANIFEST_NAME, cache_root, ensure_standin, is_complete, read_manifest, standin_dir
from .registry import BUILDER_VERSION, STANDINS, UnknownStandinError, standin_key

__all__ = [
    "BUILDER_VERSION",
    "MANIFEST_NAME",
    "STANDINS",
    "UnknownStandinError",
    "cache_root",
    "ensure_standin",
    "is_complete",
    "read_manifest",
    "standin_dir",
    "standin_key",
]
