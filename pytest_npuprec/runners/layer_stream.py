"""A transformers model whose weights live on disk: built on the meta device, each unit (a decoder layer, the
embeddings, the final norm, lm_head) read from the safetensors shards in FP32 just before it runs and dropped
after every sequence has run through it (runners/lockstep.py). The architecture's own modules do the compute,
so Llama, Qwen3 (q/k norm, tied embeddings) and remote code (MiniCPM) need nothing of their own here.

accelerate's disk offload (transformers' device_map with weights on "disk") would do the loading too, but it is
not installed here, and its hooks load a module's weights at each forward call: scoring N sequences one at a time
(no padding, the reference's rule) reads the weights N times; this reads them once for all N (lockstep.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import NpuprecError

INDEX_FILE = "model.safetensors.index.json"
READ_CHUNK = 16 << 20  # bytes read at a time
SINGLE_FILE = "model.safetensors"


class StreamError(NpuprecError):
    """The checkpoint cannot be streamed (no safetensors, or a parameter without a tensor of its name)."""


def weight_map(folder: Path) -> dict[str, Path]:
    """checkpoint tensor name -> the shard that holds it."""
    from ..checkpoints.tensors import _header

    index = folder / INDEX_FILE
    if index.is_file():
        try:
            names = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StreamError(f"{index}: expected a safetensors index with a weight_map ({exc})") from None
        return {name: folder / shard for name, shard in names.items()}
    single = folder / SINGLE_FILE
    if single.is_file():
        return {name: single for name in _header(single)[0]}
    raise StreamError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}; the streamed reference reads safetensors only")


def _torch_dtype(name: str) -> Any:
    import torch

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
              "F8_E5M2": getattr(torch, "float8_e5m2", None)}
    dtype = dtypes.get(name)
    if dtype is None:
        raise StreamError(f"safetensors dtype {name} is not supported by the streamed reference")
    return dtype


def read_tensor(path: Path, key: str, headers: dict[Path, tuple[dict, int]]) -> Any:
    """One tensor of a safetensors file in memory of its own, floating point upcast to FP32 (exactly, as
    from_pretrained(dtype=float32) does). Read in chunks of READ_CHUNK bytes straight into the FP32 tensor, so a
    4 GB embedding matrix in FP32 does not also hold its 2 GB of BF16 (headers: a cache of parsed headers)."""
    import torch

    from ..checkpoints.tensors import _header

    if path not in headers:
        headers[path] = _header(path)
    header, offset = headers[path]
    info = header.get(key)
    if info is None:
        raise StreamError(f"{path}: no tensor {key} (the index names this file for it)")
    start, end = info["data_offsets"]
    stored = _torch_dtype(info["dtype"])
    out = torch.empty(info["shape"], dtype=torch.float32 if stored.is_floating_point else stored)
    itemsize = torch.empty(0, dtype=stored).element_size()
    if out.numel() * itemsize != end - start:
        raise StreamError(f"{path}: tensor {key}: {end - start} bytes for shape {info['shape']} of {info['dtype']}")
    flat, step = out.view(-1), max(1, READ_CHUNK // itemsize)
    buffer = bytearray(min(step, out.numel()) * itemsize)
    with open(path, "rb") as fh:
        fh.seek(offset + start)
        for first in range(0, out.numel(), step):
            count = min(step, out.numel() - first)
            view = memoryview(buffer)[: count * itemsize]
            if fh.readinto(view) != len(view):
                raise StreamError(f"{path}: truncated, tensor {key} runs past the end of the file")
            flat[first:first + count].copy_(torch.frombuffer(view, dtype=stored))
    return out


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Parameters created inside go to the meta device; buffers (rotary inv_freq, computed, not stored) stay real."""
    import torch
    from torch import nn

    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Any) -> None:
        register(module, name, param)
        if param is not None:
            kwargs = dict(param.__dict__)
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)  # type: ignore[call-arg]

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        with torch.device("cpu"):
            yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def decoder_layers(model: Any) -> Any:
    """The model's largest ModuleList of one repeated module class: its decoder layers."""
    from torch import nn

    best = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise StreamError(f"{type(model).__name__}: no list of decoder layers to stream")
    return best


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


_LIBC = _glibc()
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def _map_large_blocks() -> None:
    """glibc raises its mmap threshold (up to 32 MB) each time it frees a mapped block, after which blocks of that
    size come from per-thread arenas and stay in the RSS when freed; a fixed threshold keeps every block of 1 MB or
    more (weights, activations) mapped, returned to the system when freed."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _return_freed_memory() -> None:
    """What the arenas still hold after a unit is dropped, back to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class Unit:
    """One module whose parameters are loaded together: name -> (the module owning it, attribute, tensor key)."""

    def __init__(self, label: str, module: Any):
        self.label, self.module = label, module
        self.params: list[tuple[Any, str, str]] = []
        self.loaded = False
        self.calls = 0


class StreamedModel:
    """The model skeleton and its units; `load(unit)` / `free(unit)` move one unit's weights in and out."""

    def __init__(self, folder: Path, trust_remote_code: bool = False):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.folder = Path(folder)
        self.files = weight_map(self.folder)
        _map_large_blocks()
        config = AutoConfig.from_pretrained(str(self.folder), trust_remote_code=trust_remote_code)
        with _params_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
        self.model = model.eval()
        self.model.tie_weights()
        if (self.folder / "generation_config.json").is_file():  # what from_pretrained reads too (eos, pad ids)
            from transformers import GenerationConfig

            self.model.generation_config = GenerationConfig.from_pretrained(str(self.folder))
        self.units = self._units()
        self.bytes_read = 0
        self._headers: dict[Path, tuple[dict, int]] = {}

    def _units(self) -> list[Unit]:
        """Each decoder layer's children (attention, MLP or MoE block with its experts, norms) and the layer's own
        parameters, or the whole layer when a child is a bare container (a ModuleList of experts called by the
        layer itself, whose hooks would never run); outside the layers, each module owning parameters."""
        from torch import nn

        layers = decoder_layers(self.model)
        units: list[Unit] = []
        owner_of: dict[int, Unit] = {}  # id(module) -> the unit loading its direct parameters
        for i, layer in enumerate(layers):
            children = list(layer.named_children())
            whole = Unit(f"layer {i}", layer)
            units.append(whole)
            if any(isinstance(c, (nn.ModuleList, nn.ModuleDict)) for _, c in children):
                owner_of.update({id(sub): whole for sub in layer.modules()})
                continue
            owner_of[id(layer)] = whole
            for name, child in children:
                unit = Unit(f"layer {i}.{name}", child)
                units.append(unit)
                owner_of.update({id(sub): unit for sub in child.modules()})
        inside = {id(sub) for layer in layers for sub in layer.modules()}
        for name, module in self.model.named_modules():
            if id(module) not in inside and any(True for _ in module.parameters(recurse=False)):
                units.append(Unit(name, module))
                owner_of[id(module)] = units[-1]
        missing = []
        tensors_of: dict[int, str] = {}  # id(parameter) -> a checkpoint key holding it (tied parameters share one)
        names = list(self.model.named_parameters(remove_duplicate=False))
        for name, param in names:
            if name in self.files:
                tensors_of.setdefault(id(param), name)
        for name, param in names:
            module_name, _, attr = name.rpartition(".")
            module = self.model.get_submodule(module_name)
            key = name if name in self.files else tensors_of.get(id(param))
            if key is None:
                missing.append(name)
                continue
            owner_of[id(module)].params.append((module, attr, key))
        if missing:
            raise StreamError(f"{self.folder}: no tensor for parameter(s) {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} in the safetensors files; the streamed reference "
                              "reads each parameter by its own name (use reference_memory: in_memory)")
        return [u for u in units if u.params]

    def load(self, unit: Unit) -> None:
        """Read the unit's tensors from their shards, floating ones upcast to FP32. Read, not mapped: pages of a
        mapped shard count in the process's RSS for as long as it stays mapped (a whole layer's BF16 on top of its
        FP32 copy)."""
        import torch

        for module, attr, key in unit.params:
            tensor = read_tensor(self.files[key], key, self._headers)
            self.bytes_read += tensor.numel() * tensor.element_size()
            module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
        unit.loaded = True

    def free(self, unit: Unit) -> None:
        import torch

        for module, attr, _ in unit.params:
            module._parameters[attr] = torch.nn.Parameter(module._parameters[attr].to("meta"), requires_grad=False)
        unit.loaded = False
        _return_freed_memory()

    def hook(self, before: Callable[[Unit], None], after: Callable[[Unit], None]) -> Callable[[], None]:
        """Call before(unit) / after(unit) around each unit's forward; returns the function removing the hooks."""
        handles = []
        for unit in self.units:
            handles.append(unit.module.register_forward_pre_hook(lambda m, a, u=unit: before(u)))
            handles.append(unit.module.register_forward_hook(lambda m, a, o, u=unit: after(u)))
        return lambda: [h.remove() for h in handles]

    def fp32_bytes(self) -> int:
        """The model's parameters in FP32 (tied ones once)."""
        return sum(p.numel() * 4 for p in {id(p): p for p in self.model.parameters()}.values())

    def pass_bytes(self) -> int:
        """What one pass reads: every unit's parameters in FP32 (a tied embedding twice, as input and as lm_head)."""
        return sum(getattr(module, attr).numel() * 4 for unit in self.units for module, attr, _ in unit.params)
