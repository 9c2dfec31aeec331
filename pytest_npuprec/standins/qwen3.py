"""Qwen3 architecture for stand-ins: Llama plus an RMSNorm on every query and key head.

Qwen3ForCausalLM normalises each attention head's query and key vectors
(``q_norm`` / ``k_norm``, weight of size head_dim, shared across heads)
before RoPE, and the small Qwen3 models tie the LM head to the
embedding.  Both are device-relevant: the per-head norm is an extra
kernel, and a tied checkpoint has no ``lm_head.weight`` for the engine to
load.  The norm weights start at one and are trained with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .llama import LlamaArch, config_tail


@dataclass(frozen=True)
class Qwen3Arch(LlamaArch):
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = True

    architecture: ClassVar[str] = "Qwen3ForCausalLM"

    def hf_config(self, eos_id: int) -> dict:
        """config.json contents (legacy key spellings, read by transformers 4.x and 5.x and vLLM)."""
        return {
            "architectures": [self.architecture],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": self.num_hidden_layers,
            **config_tail(self.tie_word_embeddings, eos_id),
        }

    def build_model(self, eos_id: int):
        from transformers import Qwen3Config, Qwen3ForCausalLM

        skip = ("architectures", "model_type", "torch_dtype", "dtype")  # train in FP32
        cfg = Qwen3Config(**{k: v for k, v in self.hf_config(eos_id).items() if k not in skip})
        cfg._attn_implementation = "sdpa"
        return Qwen3ForCausalLM(cfg).float()
