"""Tensors of a checkpoint on disk, read from its .safetensors files as numpy arrays (no torch).

BF16 has no numpy dtype: its 16 bits are the top half of a float32, so they are widened exactly.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import NpuprecError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class CheckpointError(NpuprecError, ValueError):
    pass


def safetensors_files(folder: Path) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in Path(folder).glob("*.bin"))
        raise CheckpointError(f"{folder}: no *.safetensors file" + (f" (found {', '.join(others)}; convert "
                              "it to safetensors to check the weights on disk)" if others else ""))
    return files


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as fh:
        size_bytes = fh.read(8)
        if len(size_bytes) != 8:
            raise CheckpointError(f"{path}: truncated file, no safetensors header")
        (size,) = struct.unpack("<Q", size_bytes)
        try:
            header = json.loads(fh.read(size))
        except ValueError as exc:
            raise CheckpointError(f"{path}: unreadable safetensors header ({exc})") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def tensor_names(folder: Path) -> list[str]:
    return [name for path in safetensors_files(folder) for name in _header(path)[0]]


def iter_tensors(folder: Path, pattern: str = ".*", exclude: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor whose name matches `pattern` (re.search) and not `exclude`;
    BF16 comes back as float32, other dtypes as they are."""
    for path in safetensors_files(folder):
        header, offset = _header(path)
        data = np.memmap(path, dtype=np.uint8, mode="r")
        for name, info in header.items():
            if not re.search(pattern, name) or (exclude and re.search(exclude, name)):
                continue
            dtype = info["dtype"]
            if dtype not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}; expected one of {', '.join(_DTYPES)}")
            start, end = info["data_offsets"]
            raw = data[offset + start: offset + end].view(_DTYPES[dtype]).reshape(info["shape"])
            if dtype == "BF16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            yield name, raw
