"""Registry of stand-in models: name -> builder spec (see spec.py for what a spec is).

Specs refer to each other as objects (the converted BitCPM holds its QAT spec object), so the
builders never look a name up here: this module imports them, none of them imports it.
"""

from __future__ import annotations

from ..errors import NpuprecError
from .bitcpm import BitCPMConvertedStandin, BitCPMQATStandin
from .chat_formats import THINKING
from .ernie_moe import ErnieMoeArch
from .guard import GUARD
from .llama import LlamaArch, LlamaStandin
from .minicpm import MiniCPMStandin
from .qwen2_audio import Qwen2AudioStandin
from .qwen3 import Qwen3Arch
from .qwen3_moe import Qwen3MoeArch
from .qwen3_vl import Qwen3VLStandin
from .spec import BUILDER_VERSION, StandinSpec, standin_key

__all__ = ["BUILDER_VERSION", "STANDINS", "StandinSpec", "UnknownStandinError", "get_spec", "standin_key"]


class UnknownStandinError(NpuprecError, KeyError):
    """Raised for a stand-in name that is not in STANDINS."""

    def __init__(self, name: str):
        self.name = name
        known = ", ".join(sorted(STANDINS)) or "(none)"
        self.message = f"unknown stand-in model {name!r}; known stand-ins: {known}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


BITCPM_QAT = BitCPMQATStandin(
    name="tiny-BitCPM4-CANN-1B-unquantized",
    description=(
        "ternary QAT checkpoint: 2-layer Llama shape with latent BF16 weights and remote code "
        "(modeling_bitcpm_qat.py, trust_remote_code) that fake-quantizes the decoder projections "
        "to absmean x {-1, 0, 1} per tensor in forward; trained with the quantizer on"
    ),
)

STANDINS: dict[str, StandinSpec] = {
    "tiny-llama": LlamaStandin(
        name="tiny-llama",
        description=(
            "2-layer LlamaForCausalLM (hidden 256, 4 heads x head_dim 64, 2 KV heads, "
            "vocab 1024 byte-level BPE) briefly trained on the bundled corpus; BF16 weights"
        ),
    ),
    BITCPM_QAT.name: BITCPM_QAT,
    "tiny-BitCPM4-CANN-1B": BitCPMConvertedStandin(
        name="tiny-BitCPM4-CANN-1B",
        description=(
            "tiny-BitCPM4-CANN-1B-unquantized converted (qat_convert.py, ternary, group_size -1): "
            "plain LlamaForCausalLM whose projection weights are BF16 scale x {-1, 0, 1}"
        ),
        qat=BITCPM_QAT,
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
    "tiny-Qwen3-VL-8B-Instruct": Qwen3VLStandin(
        name="tiny-Qwen3-VL-8B-Instruct",
        description=(
            "Qwen3VLForConditionalGeneration: 2-layer Qwen3 text stack (4 heads x head_dim 64, 2 KV heads, "
            "interleaved M-RoPE 12/10/10, untied LM head, vocab 1024 byte-level BPE with the Qwen-VL vision "
            "tokens) and a 2-block vision tower (hidden 128, patch 16, 2x2 merge, one deepstack merger); trained "
            "on seeded synthetic images (standins/synthetic.py shapes) to name their colour, shape and count"
        ),
    ),
    "tiny-Qwen2-Audio-7B-Instruct": Qwen2AudioStandin(
        name="tiny-Qwen2-Audio-7B-Instruct",
        description=(
            "Qwen2AudioForConditionalGeneration: 2-layer Qwen2 text stack (4 heads x head_dim 64, 2 KV heads, "
            "q/k/v bias, untied LM head, vocab 1024 byte-level BPE with the Qwen2-Audio audio tokens) and a "
            "2-layer Whisper-style audio encoder (d_model 128, 80 mel bins, a 2 s window: 1 s = 25 audio tokens) "
            "with its projector; trained on seeded synthetic sounds (standins/synthetic_audio.py) to name their "
            "kind, pitch and loudness (it tells noise from a tonal sound, not a tone from a chirp)"
        ),
    ),
    # no real model behind it: deep enough (4 layers) for the layer-by-layer diagnosis to name one layer
    # (pytest_npuprec/diagnose.py; its e2e test injects a fault into one layer and block)
    "tiny-llama-deep": LlamaStandin(
        name="tiny-llama-deep",
        description=(
            "tiny-llama with 4 decoder layers instead of 2 (LlamaForCausalLM, hidden 256, 4 heads x head_dim 64, "
            "2 KV heads, vocab 1024 byte-level BPE), trained the same way; for the layer-by-layer diagnosis"
        ),
        arch=LlamaArch(num_hidden_layers=4),
    ),
    "tiny-Qwen3-30B-A3B": LlamaStandin(
        name="tiny-Qwen3-30B-A3B",
        description=(
            "2-layer Qwen3MoeForCausalLM (per-head q/k RMSNorm, 4 heads x head_dim 64, 2 KV heads, every MLP "
            "a router over 8 SwiGLU experts of width 128, top-2 renormalised (norm_topk_prob), untied, vocab "
            "1024 byte-level BPE) trained on the corpus with the load-balancing loss, so experts specialise"
        ),
        arch=Qwen3MoeArch(),
    ),
    "tiny-ERNIE-4.5-21B-A3B": LlamaStandin(
        name="tiny-ERNIE-4.5-21B-A3B",
        description=(
            "3-layer Ernie4_5_MoeForCausalLM (layer 0 dense, layers 1-2 MoE: a router over 8 SwiGLU experts of "
            "width 128, top-2 renormalised, plus one shared expert; zero score-correction bias; 4 heads x "
            "head_dim 64, 2 KV heads, tied embeddings, vocab 1024 byte-level BPE) trained on the corpus with the "
            "load-balancing loss"
        ),
        arch=ErnieMoeArch(),
    ),
}


def get_spec(name: str) -> StandinSpec:
    try:
        return STANDINS[name]
    except KeyError:
        raise UnknownStandinError(name) from None
