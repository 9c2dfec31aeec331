"""Validated model configs: what one YAML under tests/e2e/models/configs/ holds, as objects.

The YAML is a superset of vllm-ascend's lm_eval configs; only the `precision:` section and the
serve settings are used here, the lm_eval keys are accepted and kept as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Bound = Literal["min", "max"]
Reduce = Literal["mean", "min", "max"]
PositionsMode = Literal["continuation", "all"]  # "all" adds every prompt position


@dataclass(frozen=True)
class ServeConfig:
    """Engine settings for the device under test (vLLM `LLM(...)` keyword arguments)."""

    dtype: str = "bfloat16"
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    trust_remote_code: bool = False
    enforce_eager: bool = False
    enable_thinking: bool | None = None  # a chat-template switch, not an engine argument
    quantization: str | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enable_expert_parallel: bool | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # serve.engine_kwargs, passed through

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "trust_remote_code": self.trust_remote_code,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
        }
        optional = {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "quantization": self.quantization,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_num_seqs": self.max_num_seqs,
            "enable_expert_parallel": self.enable_expert_parallel,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        kwargs.update(self.extra)
        return kwargs


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Prompt:
    """One prompt: plain text, or chat messages rendered with the model's chat template."""

    id: str
    text: str | None = None
    messages: tuple[Message, ...] | None = None

    @property
    def label(self) -> str:
        """Short human-readable form for tables."""
        if self.text is not None:
            return self.text
        assert self.messages is not None
        return " / ".join(m.content for m in self.messages if m.role == "user")


@dataclass(frozen=True)
class Threshold:
    """One bound on one metric, reduced over prompts and positions."""

    metric: str
    bound: Bound
    value: float
    reduce: Reduce
    id: str  # unique within the model: the metric name, plus the reduction if the metric has several

    def describe(self) -> str:
        op = ">=" if self.bound == "min" else "<="
        return f"{self.reduce} {self.metric} {op} {self.value:g}"


@dataclass(frozen=True)
class PrecisionConfig:
    prompts: tuple[Prompt, ...]
    max_tokens: int
    thresholds: tuple[Threshold, ...]
    positions: PositionsMode = "continuation"
    chat_template: bool = False  # render plain-text prompts as a single user message too
    tie_margin: float | None = None  # logit gap that counts as a BF16 tie; None = one BF16 ulp


@dataclass(frozen=True)
class ModelConfig:
    name: str  # the config's file stem: what --model selects
    path: Path
    model_name: str  # as published, e.g. Qwen/Qwen3Guard-Gen-4B
    serve: ServeConfig
    precision: PrecisionConfig | None
    stand_in: str | None = None  # name of a built-in tiny checkpoint instead of real weights
    hardware: str | None = None
    lm_eval: dict[str, Any] = field(default_factory=dict)  # vllm-ascend's keys, untouched

    @property
    def thresholds(self) -> tuple[Threshold, ...]:
        return self.precision.thresholds if self.precision else ()
