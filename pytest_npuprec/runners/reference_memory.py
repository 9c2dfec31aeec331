"""Which FP32 reference runner a model gets: all weights in host memory (runners/reference.py) or streamed a
decoder layer at a time from the shards (runners/streamed.py). Both give the same logits; streamed bounds host
memory to about one layer plus the activations. `auto` streams when the FP32 weights would take more than
AUTO_FRACTION of the memory available now."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..checkpoints.tensors import _header, safetensors_files
from ..config.schema import ReferenceMemory

# in-memory loading holds the FP32 weights plus, for a while, the checkpoint's pages and a tensor being upcast
AUTO_FRACTION = 0.5
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def fp32_weight_bytes(folder: Path) -> int:
    """Bytes the checkpoint's floating-point tensors take in FP32 (from the safetensors headers alone)."""
    total = 0
    for path in safetensors_files(folder):
        header, _ = _header(path)
        total += sum(4 * math.prod(info["shape"]) for name, info in header.items()
                     if name != "__metadata__" and info.get("dtype") in _FLOAT_DTYPES)
    return total


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def choose(memory: ReferenceMemory, model_path: Path) -> tuple[str, dict[str, Any]]:
    """("in_memory" | "streamed", why): the mode and the figures it was chosen on."""
    if memory != "auto":
        return memory, {"reference_memory": memory}
    weights, available = fp32_weight_bytes(model_path), available_bytes()
    mode = "streamed" if weights > AUTO_FRACTION * available else "in_memory"
    return mode, {"reference_memory": "auto", "fp32_weight_bytes": weights, "available_bytes": available}


def reference_runner(model_path: Path, trust_remote_code: bool, memory: ReferenceMemory = "auto") -> Any:
    """The runner to start (`with ... as ref`); the mode is chosen now, and its info on start says how."""
    from .reference import TransformersRunner
    from .streamed import StreamedRunner

    mode, why = choose(memory, model_path)
    base = StreamedRunner if mode == "streamed" else TransformersRunner

    class Chosen(base):  # type: ignore[valid-type, misc]
        def __enter__(self) -> Any:
            runner = super().__enter__()
            runner.info.update(why, memory=mode)
            return runner

    Chosen.__name__ = base.__name__
    return Chosen(model_path, trust_remote_code)
