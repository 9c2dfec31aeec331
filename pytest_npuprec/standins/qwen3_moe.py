"""Qwen3-MoE architecture for stand-ins: Qwen3 attention with a routed mixture of experts as every MLP.

Qwen3MoeForCausalLM (Qwen3-30B-A3B, and the text tower of Qwen3-VL-30B-A3B): each decoder layer's MLP
is a router (``mlp.gate``, a linear map to one logit per expert) choosing the top-k experts per token,
whose weights are the softmax over the chosen logits (``norm_topk_prob: true``: renormalised), and k
SwiGLU experts of ``moe_intermediate_size``. No shared expert.

Training adds the model's load-balancing loss (``router_aux_loss_coef``) so the experts share the work
and specialise instead of one or two taking every token; the shipped config.json has
``output_router_logits: false`` like the real checkpoint. The checkpoint is written in the per-expert
layout of the published Qwen3-MoE checkpoints (``mlp.experts.<e>.gate_proj.weight``), which both
transformers and vLLM load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .qwen3 import Qwen3Arch


@dataclass(frozen=True)
class Qwen3MoeArch(Qwen3Arch):
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 128
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.01
    tie_word_embeddings: bool = False  # like Qwen3-30B-A3B

    architecture: ClassVar[str] = "Qwen3MoeForCausalLM"

    def hf_config(self, eos_id: int) -> dict:
        cfg = super().hf_config(eos_id)
        cfg.update({
            "architectures": [self.architecture],
            "model_type": "qwen3_moe",
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "moe_intermediate_size": self.moe_intermediate_size,
            "norm_topk_prob": self.norm_topk_prob,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "output_router_logits": False,
            "router_aux_loss_coef": self.router_aux_loss_coef,
        })
        return cfg

    def build_model(self, eos_id: int):
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        skip = ("architectures", "model_type", "torch_dtype", "dtype")  # train in FP32
        cfg = Qwen3MoeConfig(**{k: v for k, v in self.hf_config(eos_id).items() if k not in skip})
        cfg.output_router_logits = True  # training adds the load-balancing loss (training.train: aux_loss)
        cfg._attn_implementation = "sdpa"
        return Qwen3MoeForCausalLM(cfg).float()

    def checkpoint_state(self, state: dict) -> dict:
        return split_experts(state)

    def routing_facts(self, model, doc_ids: list[list[int]]) -> dict:
        return routing_facts(model, doc_ids, self.num_experts, self.num_experts_per_tok)


def split_experts(state: dict) -> dict:
    """transformers' fused expert tensors ([experts, 2 x inter, hidden] gate+up, [experts, hidden, inter] down)
    split into the published per-expert layout (`mlp.experts.<e>.gate_proj.weight`)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2, dim=0)
                out[f"{base}{e}.gate_proj.weight"] = gate.contiguous()
                out[f"{base}{e}.up_proj.weight"] = up.contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e, down in enumerate(tensor):
                out[f"{base}{e}.down_proj.weight"] = down.contiguous()
        else:
            out[name] = tensor
    return out


def routing_facts(model, doc_ids: list[list[int]], n_experts: int, k: int, max_len: int = 256) -> dict:
    """How the trained router routes the corpus (for the manifest): per MoE layer each expert's share of the
    top-k slots, the distinct expert sets, and quantiles of the margin between the k-th and (k+1)-th logit."""
    import numpy as np
    import torch

    per_layer: list[list[np.ndarray]] = []
    with torch.no_grad():
        for ids in doc_ids:
            out = model(input_ids=torch.tensor([ids[:max_len]]), use_cache=False, output_router_logits=True)
            layers = [r for r in out.router_logits if r is not None]
            per_layer = per_layer or [[] for _ in layers]
            for layer, logits in enumerate(layers):
                per_layer[layer].append(logits.float().reshape(-1, n_experts).numpy())
    facts = []
    for rows in per_layer:
        logits = np.concatenate(rows)
        order = np.sort(logits, axis=-1)[:, ::-1]
        margin = order[:, k - 1] - order[:, k]
        chosen = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
        load = np.bincount(chosen.ravel(), minlength=n_experts) / chosen.size
        facts.append({
            "tokens": int(logits.shape[0]),
            "expert_load": [round(float(x), 4) for x in load],
            "distinct_expert_sets": int(len({tuple(sorted(r)) for r in chosen.tolist()})),
            "margin_quantiles": {q: round(float(np.quantile(margin, float(q))), 4)
                                 for q in ("0.01", "0.1", "0.5", "0.9", "0.99")},
        })
    return {"layers": facts}
