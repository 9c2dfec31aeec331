"""A LlamaForCausalLM checkpoint of any size with random BF16 weights, written one decoder layer per shard
(never more than one layer in memory): what the streamed reference's memory test and benchmark read.
Not a stand-in (nothing is trained or shipped): the numbers only have to be the same on both references."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .llama import LlamaArch


@dataclass(frozen=True)
class RandomLlama:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    head_dim: int = 128
    kv_heads: int = 8

    def arch(self) -> LlamaArch:
        return LlamaArch(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                         intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
                         num_attention_heads=self.hidden_size // self.head_dim, num_key_value_heads=self.kv_heads,
                         head_dim=self.head_dim, max_position_embeddings=4096)

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        h, f, kv = self.hidden_size, self.intermediate_size, self.kv_heads * self.head_dim
        return {"self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h),
                "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, h),
                "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f),
                "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}

    def shards(self) -> list[dict[str, tuple[int, ...]]]:
        """tensor name -> shape, per shard: the embeddings, each layer, then the final norm and lm_head."""
        v, h = self.vocab_size, self.hidden_size
        out = [{"model.embed_tokens.weight": (v, h)}]
        out += [{f"model.layers.{i}.{k}": s for k, s in self.layer_shapes().items()}
                for i in range(self.num_hidden_layers)]
        return out + [{"model.norm.weight": (h,), "lm_head.weight": (v, h)}]

    def fp32_bytes(self) -> int:
        total = 0
        for shard in self.shards():
            for shape in shard.values():
                n = 1
                for d in shape:
                    n *= d
                total += 4 * n
        return total

    def write(self, folder: Path, seed: int = 0) -> Path:
        """config.json, generation_config.json, one safetensors shard per entry of `shards()` and the index."""
        import torch
        from safetensors.torch import save_file

        from .llama import hf_config

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = hf_config(self.arch(), eos_id=0)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "do_sample": False}))
        generator = torch.Generator().manual_seed(seed)
        weight_map, shards = {}, self.shards()
        for n, shard in enumerate(shards):
            name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
            tensors = {key: (torch.ones(shape) + 0.1 * torch.randn(shape, generator=generator) if len(shape) == 1
                             else torch.randn(shape, generator=generator) * shape[1] ** -0.5).to(torch.bfloat16)
                       for key, shape in shard.items()}
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
            del tensors
        index = {"metadata": {"total_size": self.fp32_bytes() // 2, "random_llama": asdict(self)},
                 "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return folder
