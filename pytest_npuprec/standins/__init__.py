"""Tiny, deterministic stand-in models built locally (no model hub, no network).

>>> from pytest_npuprec.standins import STANDINS, ensure_standin, cache_root
>>> path = ensure_standin("tiny-llama")   # builds on first use (~1 min), then cached

The folder loads offline with ``AutoTokenizer`` / ``AutoModelForCausalLM``
and with vLLM.  Importing this package is cheap: torch, transformers and
tokenizers are only imported when a build actually runs.
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
