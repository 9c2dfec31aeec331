"""MiniCPM causal LM for the ``tiny-BitCPM4-0.5B`` stand-in (remote code, ``trust_remote_code=True``).

Written for this project from MiniCPM's published math, independently of vLLM's
implementation (the suite compares the two):

* token embeddings are multiplied by ``scale_emb``;
* pre-norm decoder layers (RMSNorm -> attention, RMSNorm -> SiLU-gated MLP), each branch's
  output multiplied by ``scale_depth / sqrt(num_hidden_layers)`` before it joins the residual;
* grouped-query attention with rotary position embeddings (rotate-half layout), optionally
  LongRoPE: per-frequency divisors ``short_factor``/``long_factor`` and an amplitude
  ``sqrt(1 + ln(s) / ln(original_max_position_embeddings))``, ``s`` =
  ``max_position_embeddings / original_max_position_embeddings``; the long factors apply
  when ``max_position_embeddings`` exceeds ``original_max_position_embeddings``;
* the final RMSNorm output is divided by ``hidden_size / dim_model_base`` before ``lm_head``.

Works with ``generate()`` (greedy, DynamicCache) and takes ``logits_to_keep`` as an int (last
n positions, 0 = all) or a 1-D tensor of positions.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_minicpm import MiniCPMConfig


class MiniCPMRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_settings(config):
    """(per-frequency divisors or None, cos/sin amplitude) from the config's rope parameters."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None, 1.0
    if kind not in ("longrope", "su"):
        raise ValueError(f"unsupported rope_type {kind!r} (this MiniCPM supports default and longrope)")
    original = params["original_max_position_embeddings"]
    ratio = config.max_position_embeddings / original
    factors = params["long_factor"] if ratio > 1 else params["short_factor"]
    return list(factors), math.sqrt(1 + math.log(ratio) / math.log(original))


class MiniCPMRotary(nn.Module):
    """cos/sin for positions, in float32.

    Holds no buffer: transformers 5 builds remote-code models on the meta device and does not
    restore non-persistent buffers, so the frequencies are recomputed on every call.
    """

    def __init__(self, config):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        params = getattr(config, "rope_parameters", None) or {}
        self.base = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        self.factors, self.amplitude = rope_settings(config)
        if self.factors is not None and len(self.factors) != self.head_dim // 2:
            raise ValueError(f"LongRoPE factors: need {self.head_dim // 2}, got {len(self.factors)}")

    def inv_freq(self, device=None):
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.base**exponent)
        if self.factors is not None:
            inv_freq = inv_freq / torch.tensor(self.factors, dtype=torch.float32, device=device)
        return inv_freq

    def forward(self, positions):
        angles = positions.float()[..., None] * self.inv_freq(positions.device)  # [B, T, head_dim/2]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos() * self.amplitude, angles.sin() * self.amplitude


def rotate(x, cos, sin):
    """x: [B, heads, T, D]; cos/sin: [B, T, D].  Halves layout: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    turned = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + turned * sin


class MiniCPMAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        group = self.n_heads // self.n_kv  # query head i reads kv head i // group
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.head_dim**-0.5)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MiniCPMMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r}")
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MiniCPMDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = MiniCPMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MiniCPMAttention(config, layer_idx)
        self.post_attention_layernorm = MiniCPMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MiniCPMMLP(config)
        self.branch_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.branch_scale * self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.branch_scale * self.mlp(self.post_attention_layernorm(x))


class MiniCPMPreTrainedModel(PreTrainedModel):
    config_class = MiniCPMConfig
    base_model_prefix = "model"
    _no_split_modules = ["MiniCPMDecoderLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MiniCPMRMSNorm):
            nn.init.ones_(module.weight)


class MiniCPMModel(MiniCPMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MiniCPMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MiniCPMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = MiniCPMRotary(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        x = inputs_embeds * self.config.scale_emb
        b, t, _ = x.shape
        if use_cache is None:
            use_cache = self.config.use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=x.device)[None].expand(b, t)
        cos, sin = self.rotary(position_ids)
        mask = self._attention_mask(attention_mask, b, t, past, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, past_key_values if use_cache else None)
        return self.norm(x), (past_key_values if use_cache else None)

    @staticmethod
    def _attention_mask(attention_mask, b, t, past, device):
        """None for plain causal attention over a fresh sequence, else a boolean [B, 1, T, past+T]."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        if past == 0 and not padded:
            return None
        allowed = torch.ones(t, past + t, dtype=torch.bool, device=device).tril(diagonal=past)[None, None]
        if padded:
            allowed = allowed & attention_mask[:, None, None, -(past + t):].bool()
        return allowed.expand(b, 1, t, past + t)


class MiniCPMForCausalLM(MiniCPMPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = MiniCPMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        hidden, cache = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache)
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden.index_select(1, logits_to_keep.to(hidden.device))
        width_ratio = self.config.hidden_size / self.config.dim_model_base
        logits = self.lm_head(hidden / width_ratio)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
