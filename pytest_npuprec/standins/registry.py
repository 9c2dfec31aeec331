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

from ..errors import NpuprecError
from .bitcpm import BitCPMConvertedStandin, BitCPMQATStandin
from .chat_formats import THINKING
from .guard import GUARD
from .llama import LlamaArch, LlamaStandin
from .minicpm import MiniCPMStandin
from .qwen3 import Qwen3Arch

# Bump when the build procedure changes in a way key_material() does not see.
BUILDER_VERSION = 1


class StandinSpec(Protocol):
    name: str
    description: str

    def key_material(self) -> dict: ...

    def build(self, out_dir) -> dict: ...


class UnknownStandinError(NpuprecError, KeyError):
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
    "tiny-BitCPM4-CANN-1B-unquantized": BitCPMQATStandin(
        name="tiny-BitCPM4-CANN-1B-unquantized",
        description=(
            "ternary QAT checkpoint: 2-layer Llama shape with latent BF16 weights and remote code "
            "(modeling_bitcpm_qat.py, trust_remote_code) that fake-quantizes the decoder projections "
            "to absmean x {-1, 0, 1} per tensor in forward; trained with the quantizer on"
        ),
    ),
    "tiny-BitCPM4-CANN-1B": BitCPMConvertedStandin(
        name="tiny-BitCPM4-CANN-1B",
        description=(
            "tiny-BitCPM4-CANN-1B-unquantized converted (qat_convert.py, ternary, group_size -1): "
            "plain LlamaForCausalLM whose projection weights are BF16 scale x {-1, 0, 1}"
        ),
        qat_standin="tiny-BitCPM4-CANN-1B-unquantized",
    ),
    "tiny-Qwen3Guard-Gen-4B": LlamaStandin(
        name="tiny-Qwen3Guard-Gen-4B",
        description=(
            "2-layer Qwen3ForCausalLM (per-head q/k RMSNorm, tied embeddings, 4 heads x head_dim 64, "
            "2 KV heads, vocab 1024 byte-level BPE) trained on the corpus and on guard verdicts "
            "('Safety: ...' / 'Categories: ...') behind a Qwen3Guard-style moderation template"
        ),
        arch=Qwen3Arch(),
        chat=GUARD,
        conversation_files=("guard.jsonl",),
    ),
    "tiny-Nanbeige4-3B-Thinking-2511": LlamaStandin(
        name="tiny-Nanbeige4-3B-Thinking-2511",
        description=(
            "2-layer LlamaForCausalLM with rope_theta 5e6 and 65536 positions (like Nanbeige4-3B), "
            "vocab 1024 byte-level BPE with single-token <think> and </think>, trained on the corpus "
            "and on short reasoning + answer conversations (enable_thinking template)"
        ),
        arch=LlamaArch(rope_theta=5_000_000.0, max_position_embeddings=65536),
        chat=THINKING,
        conversation_files=("thinking.jsonl",),
    ),
    "tiny-BitCPM4-0.5B": MiniCPMStandin(
        name="tiny-BitCPM4-0.5B",
        description=(
            "2-layer MiniCPMForCausalLM with its own remote code (trust_remote_code; scale_emb 12, "
            "residual branches x scale_depth/sqrt(layers) = 0.28, hidden / 4 before lm_head, LongRoPE "
            "short factors; 4 heads x head_dim 64, 2 KV heads, vocab 1024 byte-level BPE) trained on "
            "the corpus; BF16 weights"
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
