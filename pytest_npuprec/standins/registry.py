"""Registry of stand-in models: name -> builder spec.

A builder spec provides ``key_material() -> dict`` (everything that
determines the checkpoint apart from BUILDER_VERSION) and
``build(out_dir) -> dict`` (writes the checkpoint files except the manifest
and returns facts for it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

from .llama import LlamaStandin

# Bump when the build procedure changes in a way key_material() does not see.
BUILDER_VERSION = 1


class StandinSpec(Protocol):
    name: str
    description: str

    def key_material(self) -> dict: ...

    def build(self, out_dir) -> dict: ...


class UnknownStandinError(KeyError):
    """Raised for a stand-in name that is not in STANDINS."""

    def __init__(self, name: str):
        self.name = name
        known = ", ".join(sorted(STANDINS)) or "(none)"
        self.message = f"unknown stand-in model {name!r}; known stand-ins: {known}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


STANDINS: dict[str, StandinSpec] = {
    "tiny-llama": LlamaStandin(
        name="tiny-llama",
        description=(
            "2-layer LlamaForCausalLM (hidden 256, 4 heads x head_dim 64, 2 KV heads, "
            "vocab 1024 byte-level BPE) briefly trained on the bundled corpus; BF16 weights"
        ),
    ),
}


def get_spec(name: str) -> StandinSpec:
    try:
        return STANDINS[name]
    except KeyError:
        raise UnknownStandinError(name) from None


def standin_key(spec: StandinSpec, length: int = 12) -> str:
    """Short hash of everything that determines a stand-in checkpoint."""
    material = {"builder_version": BUILDER_VERSION, "name": spec.name, **spec.key_material()}
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
