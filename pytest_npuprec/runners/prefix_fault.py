"""Worker side: the `prefix_only` device fault, wrong only in a prefill that continues computed tokens.

That is the state a request carries across forward passes (vllm-ascend #1678): a prompt whose prefix was read
from the prefix cache, or the second chunk of a chunked prefill. A forward pass's request i is such a prefill
when `input_batch.num_computed_tokens_cpu[i] > 0` (tokens computed before this pass) and it schedules more than
one token (query_start_loc; a decode step schedules one). Its rows of the final hidden states are perturbed;
every other row is left alone, so a cold prefill and every decode step are right.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .step_logits import persistent_batch


def continued_prefill_rows(runner: Any) -> list[tuple[int, int]]:
    """(first row, end) of each request of the running forward pass that continues computed tokens with more
    than one new token."""
    batch, qsl = persistent_batch(runner)
    n = len(batch.req_ids)
    scheduled = np.diff(qsl[: n + 1])
    computed = batch.num_computed_tokens_cpu[:n]
    return [(int(qsl[i]), int(qsl[i + 1])) for i in range(n) if computed[i] > 0 and scheduled[i] > 1]


def prefix_only(model: Any, runner: Any, relative: float) -> str:
    """Fixed (seeded) noise x `relative` x mean |hidden| on the final hidden states of those rows."""
    import torch

    generator = torch.Generator().manual_seed(4321)
    noise: dict[int, Any] = {}  # hidden size -> one fixed noise vector

    def hook(module: Any, args: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.dim() != 2:
            return None
        spans = continued_prefill_rows(runner)
        if not spans:
            return None
        width = hidden.shape[-1]
        if width not in noise:
            noise[width] = torch.randn(width, generator=generator)
        z = noise[width].to(hidden.device)
        out = hidden.clone()
        for start, end in spans:
            rows = out[start:end].float()
            out[start:end] = (rows + relative * z * rows.abs().mean()).to(out.dtype)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    model.register_forward_hook(hook, prepend=True)  # before the capture hook reads the hidden states
    return (f"prefills continuing computed tokens (prefix cache hits, later chunks) only: fixed noise x{relative:g} "
            "(relative) on their final hidden states")
