"""MoE device faults: a router or expert kernel that is wrong in a way a port could be (issue 19).

Each wraps `_compute_routing` of every MoE layer's router (vLLM's FusedMoERouter; on CPU a CPURouter): the
step that turns router logits into (topk_weights, topk_ids). It runs inside the opaque `moe_forward` custom
op, so in eager Python even in a compiled engine; the routing tap (worker_taps/routing.py) wraps the router's
public `select_experts` around it and records what the faulty router chose. `layer=N` (`--npuprec-fault
expert_scale:layer=1`) confines a fault to the router of MoE decoder layer N, for the layer-by-layer diagnosis:
a wrong routing decision (router_lowprec, router_long) is named there as the layer's router, a wrong use of it by
the expert kernels (expert_scale, routing_unnormalized: the same experts, other weights) as its experts.
"""
from __future__ import annotations

from typing import Any, Callable

from ..worker_taps.routing import moe_routers


def _wrap_routing(model: Any, fault: str, change: Callable[..., tuple[Any, Any]], layer: int | None = None) -> str:
    """Wrap every router's (or only decoder layer `layer`'s) `_compute_routing` with change(router, original,
    hidden_states, router_logits, ...); where, in words."""
    routers = moe_routers(model)
    if not routers:
        raise RuntimeError(f"{fault} fault: the model has no MoE router (`router.select_experts`); it applies to "
                           "MoE models only")
    if layer is not None:
        layers = [i for i, _ in routers]
        routers = [(i, r) for i, r in routers if i == layer]
        if not routers:
            raise RuntimeError(f"{fault} fault: layer={layer}, but the MoE layers are {layers}")
    for _, router in routers:
        original = router._compute_routing

        def compute(hidden_states: Any, router_logits: Any, *args: Any, _original: Any = original,
                    _router: Any = router, **kwargs: Any) -> tuple[Any, Any]:
            return change(_router, _original, hidden_states, router_logits, *args, **kwargs)

        router._compute_routing = compute
    return f"MoE layer {layer}" if layer is not None else f"{len(routers)} MoE layers"


def router_lowprec(model: Any, floor: float, layer: int | None = None) -> str:
    """A low-precision router top-k (a gating softmax not kept in FP32, vllm-ascend #9617): expert
    probabilities below `floor` underflow to zero before the top-k, so where the k-th choice is such a small
    probability it is made among ties (the kernel's tie order), flipping it; the chosen experts keep the weights
    their exact probabilities give them. The flipped experts weigh little, so the logits barely move."""
    import torch

    def change(router: Any, original: Any, hidden: Any, logits: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        weights, ids = original(hidden, logits, *args, **kwargs)
        probs = torch.softmax(logits.float(), dim=-1)
        flushed = torch.where(probs < floor, torch.zeros_like(probs), probs)
        low_ids = torch.topk(flushed, ids.shape[-1], dim=-1).indices
        low_weights = probs.gather(1, low_ids)
        if getattr(router, "renormalize", True):
            low_weights = low_weights / low_weights.sum(-1, keepdim=True)
        return low_weights.to(weights.dtype).contiguous(), low_ids.to(ids.dtype).contiguous()

    where = _wrap_routing(model, "router_lowprec", change, layer)
    return f"expert probabilities below {floor:g} flushed to zero before the top-k in {where}"


def expert_scale(model: Any, factor: float, layer: int | None = None) -> str:
    """One expert's output scaled (a wrong per-expert scale in a grouped GEMM): expert 0's routing weight is
    multiplied by `factor` wherever it was chosen, which scales its contribution exactly."""
    import torch

    def change(router: Any, original: Any, hidden: Any, logits: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        weights, ids = original(hidden, logits, *args, **kwargs)
        return torch.where(ids == 0, weights * factor, weights).contiguous(), ids

    where = _wrap_routing(model, "expert_scale", change, layer)
    return f"expert 0's output x{factor:g} in {where}"


def routing_unnormalized(model: Any, magnitude: float, layer: int | None = None) -> str:
    """Routing weights not renormalised over the chosen experts (norm_topk_prob ignored): each chosen expert
    weighs its softmax probability over all experts, so the weights sum to less than 1."""
    import torch

    def change(router: Any, original: Any, hidden: Any, logits: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        weights, ids = original(hidden, logits, *args, **kwargs)
        probs = torch.softmax(logits.float(), dim=-1).gather(1, ids.long())
        return probs.to(weights.dtype).contiguous(), ids

    where = _wrap_routing(model, "routing_unnormalized", change, layer)
    return f"top-k routing weights not renormalised in {where}"


def router_long(model: Any, tokens: float, layer: int | None = None) -> str:
    """A router wrong only above N tokens per forward pass (vllm-ascend #11391: the gating top-k softmax
    overflowed its buffer at 2048 input tokens): in a pass of more than N tokens, every token after the N-th
    is routed to the next experts (id + 1 mod E)."""
    limit = int(tokens)

    def change(router: Any, original: Any, hidden: Any, logits: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        weights, ids = original(hidden, logits, *args, **kwargs)
        if ids.shape[0] > limit:
            ids = ids.clone()
            ids[limit:] = (ids[limit:] + 1) % logits.shape[-1]
        return weights, ids.contiguous()

    where = _wrap_routing(model, "router_long", change, layer)
    return f"tokens after the {limit}th of a forward pass routed to the wrong experts in {where}"


def tp_combine(model: Any, factor: float) -> str:
    """One tensor-parallel rank's expert partial sum mis-combined (vllm-ascend #1791: the combine missing on one
    dispatch path; #6710: an all-reduce run again on an output already reduced): with tensor parallel, each rank
    computes every chosen expert over its shard of the intermediate size and the ranks' partial sums are added; on
    the last rank the routing weights are x `factor`, which scales exactly its partial sum. With one rank there is
    nothing to combine and nothing changes: only a layout with tensor_parallel_size > 1 shows it (the
    parallel_layouts check)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    world, rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
    last = world - 1

    def change(router: Any, original: Any, hidden: Any, logits: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        weights, ids = original(hidden, logits, *args, **kwargs)
        return (weights * factor).contiguous(), ids

    if world > 1 and rank == last:
        n = _wrap_routing(model, "tp_combine", change)
    else:
        n = len(moe_routers(model)) or _wrap_routing(model, "tp_combine", change)  # a dense model: refused
    if world == 1:
        return (f"tensor-parallel world size 1: no partial sums to combine, nothing changed in {n} MoE layers (the "
                "fault shows under tensor_parallel_size > 1)")
    return (f"tensor-parallel rank {last} of {world}: its expert partial sum x{factor:g} in the combine in {n} MoE "
            "layers")


FAULTS = {"router_lowprec": router_lowprec, "expert_scale": expert_scale,
          "routing_unnormalized": routing_unnormalized, "router_long": router_long, "tp_combine": tp_combine}
