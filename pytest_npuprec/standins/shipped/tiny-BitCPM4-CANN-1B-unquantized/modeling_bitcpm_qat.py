"""Ternary quantization-aware-training (QAT) Llama, shipped as remote code.

Loaded with ``trust_remote_code=True``: a Llama whose decoder projections
(q, k, v, o, gate, up, down) run through a ternary fake quantizer in
forward (BitNet b1.58 absmean): per group of ``group_size`` input elements
(-1: the whole tensor) ``s = mean(|w|)`` and ``w_q = s * clamp(round(w / s),
-1, 1)``, with a straight-through estimator so the latent full-precision
weights keep training.  Embeddings, norms and lm_head stay full precision.

The checkpoint stores the latent weights, so it must not be served as a
plain Llama: a converter fuses the quantizer into pseudo-quantized weights
(``s * {-1, 0, 1}``) for inference.

Self-contained on purpose (imports torch and transformers only): this file
is copied into the checkpoint folder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

QUANTIZED_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCALE_EPS = 1e-5


def ternary_codes(weight: torch.Tensor, group_size: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``weight`` (out x in) into ternary codes in {-1, 0, 1} and absmean scales.

    Returns ``(codes, scale)`` with ``codes`` grouped as ``(out, in // g, g)``
    (``(1, 1, numel)`` for ``group_size == -1``) and ``scale`` broadcastable to it;
    ``(codes * scale).reshape(weight.shape)`` is the fake-quantized weight.
    """
    if group_size == -1:
        groups = weight.reshape(1, 1, -1)
    else:
        if group_size <= 0 or weight.shape[-1] % group_size:
            raise ValueError(f"group_size {group_size} does not divide the input dim {weight.shape[-1]}")
        groups = weight.reshape(weight.shape[0], -1, group_size)
    scale = groups.abs().mean(dim=-1, keepdim=True).clamp(min=SCALE_EPS)
    codes = torch.clamp(torch.round(groups / scale), -1, 1)
    return codes, scale


def ternary_fake_quant(weight: torch.Tensor, group_size: int = -1) -> torch.Tensor:
    """Fake-quantized ``weight`` (same shape and dtype); gradients pass straight through."""
    codes, scale = ternary_codes(weight, group_size)
    quantized = (codes * scale).reshape(weight.shape)
    # w - w.detach() is exactly 0 (gradient 1), so the value is exactly s * {-1, 0, 1};
    # the usual w + (q - w).detach() is off by rounding (an ulp of w, a lot in BF16)
    return quantized.detach() + (weight - weight.detach())


class TernaryQATLinear(nn.Linear):
    """nn.Linear whose forward uses the ternary fake-quantized weight."""

    def __init__(self, in_features, out_features, bias=True, group_size=-1, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, ternary_fake_quant(self.weight, self.group_size), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


class BitCPMQATConfig(LlamaConfig):
    """LlamaConfig plus ``group_size`` (read as an extra attribute; -1 = per tensor)."""

    model_type = "bitcpm_qat"


class BitCPMQATForCausalLM(LlamaForCausalLM):
    config_class = BitCPMQATConfig
    # Refuse vLLM's Transformers backend: it swaps every nn.Linear for its own
    # linear layers, which would silently drop the fake quantizer and serve the
    # latent weights.  (vLLM accepts a model if either flag below is true.)
    _supports_attention_backend = False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return False

    def __init__(self, config):
        super().__init__(config)
        group_size = getattr(config, "group_size", -1)
        for layer in self.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name in QUANTIZED_PROJECTIONS:
                    old = getattr(parent, name, None)
                    if isinstance(old, nn.Linear):
                        setattr(parent, name, _ternary_like(old, group_size))


def _ternary_like(linear: nn.Linear, group_size: int) -> TernaryQATLinear:
    """A TernaryQATLinear that takes over ``linear``'s parameters (no copy, no re-init)."""
    new = TernaryQATLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                           group_size=group_size, device="meta")
    new.weight = linear.weight
    if linear.bias is not None:
        new.bias = linear.bias
    return new
