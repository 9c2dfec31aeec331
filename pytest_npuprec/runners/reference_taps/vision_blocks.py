"""Inside the layers tap (reference side): the vision tower's hidden state after every block and each block's
attention and MLP outputs, over every patch of the forward pass's images (transformers runs the tower once per
forward, on all of them)."""
from __future__ import annotations

from typing import Any, Callable

from ..vision_blocks import VISION_BLOCKS, hook_block, vision_blocks

VISION_KINDS = ("output", *VISION_BLOCKS)


def hook_vision(model: Any, seen: dict[tuple[str, int], Any], mine: Callable[[], bool]) -> tuple[int, list[Any]]:
    """(number of vision blocks, hook handles): seen[(f"vision_{kind}", block)] gets each call's [patches x hidden]."""
    blocks = vision_blocks(model)
    handles = []

    def keeper(index: int) -> Any:
        def keep(kind: str, tensor: Any) -> None:
            if mine():
                seen.setdefault((f"vision_{kind}", index), []).append(tensor.detach().float().clone())

        return keep

    for i, block in enumerate(blocks):
        handles += hook_block(block, keeper(i))
    return len(blocks), handles


def vision_arrays(n_blocks: int, seen: dict[tuple[str, int], list[Any]]) -> dict[str, Any]:
    import numpy as np
    import torch

    if not n_blocks or ("vision_output", 0) not in seen:
        return {}
    return {f"vision_{kind}": torch.stack([torch.cat(seen[(f"vision_{kind}", i)]) for i in range(n_blocks)])
            .numpy().astype(np.float32) for kind in VISION_KINDS}
