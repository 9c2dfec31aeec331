"""Inside the layers tap (worker side): the vision tower's hidden state after every block, and each block's
attention and MLP outputs, over every patch the tower saw since the tap was armed (the diagnosis reruns one prompt;
vLLM runs the tower in its encoder step, before the decoder's forward pass, so these are kept across passes)."""
from __future__ import annotations

from typing import Any

from ..vision_blocks import VISION_BLOCKS, hook_block, vision_blocks

VISION_KINDS = ("output", *VISION_BLOCKS)


class VisionWatch:
    def __init__(self, model: Any):
        self.blocks = vision_blocks(model)
        self.seen: dict[tuple[str, int], list[Any]] = {}  # (kind, block) -> [patches x hidden] per tower call

    def install(self) -> None:
        for i, block in enumerate(self.blocks):
            hook_block(block, self._keeper(i))

    def _keeper(self, index: int) -> Any:
        def keep(kind: str, tensor: Any) -> None:
            self.seen.setdefault((kind, index), []).append(tensor.detach().float().cpu().clone())

        return keep

    def reset(self) -> None:
        self.seen = {}

    def arrays(self) -> dict[str, Any]:
        """vision_output / vision_attention / vision_mlp: float32 [blocks x patches x hidden] (empty: the tower did
        not run, a prompt without images)."""
        import numpy as np
        import torch

        if not self.blocks or not self.seen:
            return {}
        return {f"vision_{kind}": torch.stack([torch.cat(self.seen[(kind, i)]) for i in range(len(self.blocks))])
                .numpy().astype(np.float32) for kind in VISION_KINDS}
