"""A transformers model whose weights live on disk: built on the meta device, each unit read from the safetensors
shards in FP32 just before it runs and dropped once every sequence has run through it (runners/lockstep.py). A
unit is a module owning parameters: inside a decoder layer each leaf of the attention and MLP (q/k/v/o,
gate/up/down, norms) or a whole MoE block with all its experts; the embedding matrix reads only the rows of the
tokens looked up; a Linear above CHUNK_BYTES (lm_head, a 70B model's MLP projections) runs a block of output rows
at a time. The architecture's own modules do the compute, so Llama, Qwen3 (q/k norm, tied embeddings), remote code
(MiniCPM), MoE (fused experts read per expert, as transformers converts them on load) and vision-language models
need nothing of their own here.

Compared (docs/performance.md): accelerate's disk offload (transformers' device_map with modules on "disk", over
the same safetensors shards; accelerate 1.15 in a scratch environment) gives the same logits, but on the
benchmark model its RSS peaked at 2.91 GB (0.66x the FP32 weights; its own memory as small as this one's, the
rest the shards' pages it keeps mapped) against 0.74 GB, and its hooks load a module's weights at each forward
call, so scoring N sequences one at a time (no padding, the reference's rule) reads the weights N times (99 s
against 52 s for 4 sequences); this reads them once for all N. It is not a dependency.
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


def _tensor_info(path: Path, key: str, headers: dict[Path, tuple[dict, int]]) -> tuple[dict, int, Any]:
    """(header entry, offset of the data, stored torch dtype) of one tensor (headers: a cache of parsed headers)."""
    from ..checkpoints.tensors import _header

    if path not in headers:
        headers[path] = _header(path)
    header, offset = headers[path]
    info = header.get(key)
    if info is None:
        raise StreamError(f"{path}: no tensor {key} (the index names this file for it)")
    stored = _torch_dtype(info["dtype"])
    start, end = info["data_offsets"]
    count = 1
    for d in info["shape"]:
        count *= d
    if count * _itemsize(stored) != end - start:
        raise StreamError(f"{path}: tensor {key}: {end - start} bytes for shape {info['shape']} of {info['dtype']}")
    return info, offset + start, stored


def _itemsize(dtype: Any) -> int:
    import torch

    return torch.empty(0, dtype=dtype).element_size()


def _read_into(fh: Any, flat: Any, stored: Any, where: str) -> None:
    """Fill `flat` (1-D) from the file's current position, READ_CHUNK bytes at a time, upcast on the copy."""
    import torch

    itemsize = _itemsize(stored)
    step = max(1, READ_CHUNK // itemsize)
    buffer = bytearray(min(step, flat.numel()) * itemsize)
    for first in range(0, flat.numel(), step):
        count = min(step, flat.numel() - first)
        view = memoryview(buffer)[: count * itemsize]
        if fh.readinto(view) != len(view):
            raise StreamError(f"{where}: truncated, the tensor runs past the end of the file")
        flat[first:first + count].copy_(torch.frombuffer(view, dtype=stored))


def read_tensor(path: Path, key: str, headers: dict[Path, tuple[dict, int]], rows: tuple[int, int] | None = None) -> Any:
    """One tensor of a safetensors file (or its rows [first, last) of the first dimension) in memory of its own,
    floating point upcast to FP32 (exactly, as from_pretrained(dtype=float32) does). Read in chunks of READ_CHUNK
    bytes straight into the FP32 tensor, so a 4 GB embedding matrix in FP32 does not also hold its 2 GB of BF16,
    and never memory-mapped: a mapped shard's pages count in the process's RSS for as long as it stays mapped."""
    import torch

    info, data, stored = _tensor_info(path, key, headers)
    shape = list(info["shape"])
    skip = 0
    if rows is not None:
        row_items = 1
        for d in shape[1:]:
            row_items *= d
        skip, shape[0] = rows[0] * row_items * _itemsize(stored), rows[1] - rows[0]
    out = torch.empty(shape, dtype=torch.float32 if stored.is_floating_point else stored)
    with open(path, "rb") as fh:
        fh.seek(data + skip)
        _read_into(fh, out.view(-1), stored, f"{path}: tensor {key}")
    return out


def read_experts(shape: Any, files: dict[str, Path], keys: list[list[str]], headers: dict[Path, tuple[dict, int]]) -> Any:
    """A fused experts parameter [experts x ...] in FP32: expert e is keys[e]'s tensors concatenated along their
    first dimension (gate then up: transformers' MergeModulelist + Concatenate), each read straight into its
    place."""
    import torch

    out = torch.empty(tuple(shape), dtype=torch.float32)
    for expert, parts in enumerate(keys):
        first = 0
        for key in parts:
            info, data, stored = _tensor_info(files[key], key, headers)
            rows = info["shape"][0]
            with open(files[key], "rb") as fh:
                fh.seek(data)
                _read_into(fh, out[expert, first:first + rows].view(-1), stored, f"{files[key]}: tensor {key}")
            first += rows
    return out


def read_rows_into(out: Any, path: Path, key: str, rows: list[int], headers: dict[Path, tuple[dict, int]]) -> None:
    """Rows `rows` of a 2-D tensor into the same rows of `out` (FP32, the tensor's full shape)."""
    info, data, stored = _tensor_info(path, key, headers)
    row_bytes = info["shape"][1] * _itemsize(stored)
    with open(path, "rb") as fh:
        for row in rows:
            fh.seek(data + row * row_bytes)
            _read_into(fh, out[row], stored, f"{path}: tensor {key}")


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
    """The model's largest ModuleList of one repeated module class outside a vision tower: its decoder layers."""
    from torch import nn

    best = None
    for name, module in model.named_modules():
        if _in_vision_tower(name):
            continue
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


CHUNK_BYTES = 128 << 20  # a Linear whose FP32 weight is larger is read and applied this many bytes of rows at a time


class Unit:
    """One module whose parameters are loaded together: (the module owning each, attribute, tensor key).
    kind "whole": all of them before the module runs; "rows": an embedding matrix of which only the rows of the
    token ids looked up are read (the rest stays untouched, never resident); "chunks": a Linear applied a block of
    output rows at a time (its forward replaced), each block read once for every sequence."""

    def __init__(self, label: str, module: Any):
        self.label, self.module = label, module
        self.params: list[tuple[Any, str, Any]] = []  # key: a tensor name, or per-expert names (read_experts)
        self.kind = "whole"
        self.loaded = False
        self.calls = 0
        # a vision tower's: run only by the sequences with images, so freed after each call (read once per such
        # sequence) rather than after every sequence has run it
        self.alone = False
        self.rows: set[int] = set()  # "rows": the rows read so far
        self.blocks: list[tuple[int, int]] = []  # "chunks": [first, last) output rows of each block
        self.block: tuple[int, Any, Any] | None = None  # "chunks": (index, weight rows, bias rows) held now
        self.block_calls: dict[int, int] = {}


class _Alone:
    """The pace of one sequence at a time (no lockstep): every unit is freed after each call."""

    sequences = 1

    def after_unit(self) -> None:
        pass


def _is_leaf(module: Any) -> bool:
    return next(module.children(), None) is None


def _splittable(child: Any) -> bool:
    """A layer child whose parameters all sit in leaf modules (Linear, norms), each called once by its forward:
    each such leaf can be a unit of its own. MoE blocks (experts modules with an activation child, expert lists)
    stay whole."""
    from torch import nn

    if any(isinstance(m, (nn.ModuleList, nn.ModuleDict)) for m in child.modules()):
        return False
    return all(_is_leaf(m) for m in child.modules() if any(True for _ in m.parameters(recurse=False)))


class StreamedModel:
    """The model skeleton and its units, loaded before and freed after each runs (`attach()`): a unit is freed
    once `pace.sequences` calls have run through it, and `pace.after_unit()` is called after each unit (and each
    block of a chunked Linear) so that sequences run in lockstep (lockstep.py)."""

    def __init__(self, folder: Path, trust_remote_code: bool = False, pace: Any = None,
                 chunk_bytes: int | None = None):
        import torch
        from transformers import AutoConfig

        self.folder = Path(folder)
        self.files = weight_map(self.folder)
        self.pace = pace or _Alone()
        self.chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        _map_large_blocks()
        config = AutoConfig.from_pretrained(str(self.folder), trust_remote_code=trust_remote_code)
        with _params_on_meta():
            model = _model_class(self.folder).from_config(
                config, dtype=torch.float32, trust_remote_code=trust_remote_code)
        self.model = model.eval()
        self.model.tie_weights()
        if (self.folder / "generation_config.json").is_file():  # what from_pretrained reads too (eos, pad ids)
            from transformers import GenerationConfig

            self.model.generation_config = GenerationConfig.from_pretrained(str(self.folder))
        self._headers: dict[Path, tuple[dict, int]] = {}
        self.units = self._units()
        self.model.npuprec_stored_parameter = self.stored_parameter
        self.bytes_read = 0  # whole units and blocks
        self.row_bytes_read = 0  # rows of embedding matrices

    def _units(self) -> list[Unit]:
        """Each decoder layer's children (attention, MLP, norms; a child of leaves only split into its leaves:
        q/k/v/o, gate/up/down) or the MoE block with its experts whole, and the layer's own parameters; the whole
        layer when a child is a bare container (a ModuleList of experts called by the layer itself, whose hooks
        would never run); outside the layers, each module owning parameters."""
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
                if not _splittable(child):
                    unit = Unit(f"layer {i}.{name}", child)
                    units.append(unit)
                    owner_of.update({id(sub): unit for sub in child.modules()})
                    continue
                for sub_name, sub in child.named_modules():
                    if any(True for _ in sub.parameters(recurse=False)):
                        units.append(Unit(f"layer {i}.{name}{'.' if sub_name else ''}{sub_name}", sub))
                        owner_of[id(sub)] = units[-1]
        inside = {id(sub) for layer in layers for sub in layer.modules()}
        for name, module in self.model.named_modules():
            if id(module) not in inside and any(True for _ in module.parameters(recurse=False)):
                units.append(Unit(name, module))
                units[-1].alone = _in_vision_tower(name)
                owner_of[id(module)] = units[-1]
        missing = []
        renamed = _renamed_keys(self.model, self.files)
        tensors_of: dict[int, str] = {}  # id(parameter) -> a checkpoint key holding it (tied parameters share one)
        names = list(self.model.named_parameters(remove_duplicate=False))
        for name, param in names:
            if name in renamed:
                tensors_of.setdefault(id(param), renamed[name])
        for name, param in names:
            module_name, _, attr = name.rpartition(".")
            module = self.model.get_submodule(module_name)
            key = tensors_of.get(id(param)) or self._expert_keys(name, param.shape)
            if key is None:
                missing.append(name)
                continue
            owner_of[id(module)].params.append((module, attr, key))
        if missing:
            raise StreamError(f"{self.folder}: no tensor for parameter(s) {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} in the safetensors files; the streamed reference "
                              "reads each parameter by its own name (use reference_memory: in_memory)")
        units = [u for u in units if u.params]
        for unit in units:
            self._choose_kind(unit)
        return units

    def _expert_keys(self, name: str, shape: Any) -> list[list[str]] | None:
        """The per-expert checkpoint tensors a fused experts parameter (`...experts.gate_up_proj` [E x 2I x H],
        `...experts.down_proj` [E x H x I]) is built from, as transformers converts them on load; None when the
        checkpoint does not hold them in exactly that layout."""
        prefix, _, attr = name.rpartition(".")
        parts = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}.get(attr)
        if parts is None or not prefix.endswith("experts") or len(shape) != 3:
            return None
        keys = [[f"{prefix}.{e}.{part}.weight" for part in parts] for e in range(shape[0])]
        if any(key not in self.files for row in keys for key in row):
            return None
        for row in keys:
            shapes = [_tensor_info(self.files[key], key, self._headers)[0]["shape"] for key in row]
            if [sum(s[0] for s in shapes), *shapes[0][1:]] != list(shape[1:]) or any(s[1:] != shapes[0][1:] for s in shapes):
                return None
        return keys

    def stored_parameter(self, name: str) -> Any:
        """One parameter's value read from the checkpoint in FP32, whether its unit is loaded or not (for checks on
        the weights after a forward, e.g. the routing tap's correction bias)."""
        for unit in self.units:
            for module, attr, key in unit.params:
                if module is self.model.get_submodule(name.rpartition(".")[0]) and attr == name.rpartition(".")[2]:
                    if isinstance(key, list):
                        return read_experts(getattr(module, attr).shape, self.files, key, self._headers)
                    return read_tensor(self.files[key], key, self._headers)
        raise StreamError(f"{self.folder}: no parameter {name} in the streamed model")

    def _choose_kind(self, unit: Unit) -> None:
        """Rows for a plain embedding (its forward reads only the rows looked up), chunks for a plain Linear above
        chunk_bytes in FP32 (each output row is its own dot product); subclasses (remote code, QAT layers that
        quantize the whole weight) stay whole."""
        from torch import nn

        module, attrs = unit.module, sorted(attr for m, attr, _ in unit.params if m is unit.module)
        if len(attrs) != len(unit.params):
            return
        if type(module).forward is nn.Embedding.forward and attrs == ["weight"] and module.max_norm is None:
            unit.kind = "rows"
        elif type(module) is nn.Linear and attrs in (["weight"], ["bias", "weight"]) \
                and module.weight.numel() * 4 > self.chunk_bytes:
            out_rows = module.weight.shape[0]
            count = -(-module.weight.numel() * 4 // self.chunk_bytes)
            step = -(-out_rows // count)
            unit.kind, unit.blocks = "chunks", [(lo, min(lo + step, out_rows)) for lo in range(0, out_rows, step)]

    def load(self, unit: Unit) -> None:
        """Read a whole unit's tensors from their shards, floating ones upcast to FP32; a rows unit gets its
        matrix allocated untouched (only the rows read later become resident)."""
        import torch

        for module, attr, key in unit.params:
            if unit.kind == "rows":
                tensor = torch.empty(tuple(getattr(module, attr).shape), dtype=torch.float32)
            elif isinstance(key, list):
                tensor = read_experts(getattr(module, attr).shape, self.files, key, self._headers)
                self.bytes_read += tensor.numel() * tensor.element_size()
            else:
                tensor = read_tensor(self.files[key], key, self._headers)
                self.bytes_read += tensor.numel() * tensor.element_size()
            module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
        unit.loaded = True

    def read_rows(self, unit: Unit, ids: Any) -> None:
        """The rows of the token ids `ids` not read yet, into the loaded rows unit."""
        wanted = sorted({int(i) for i in ids.reshape(-1).tolist()} - unit.rows)
        if not wanted:
            return
        module, attr, key = unit.params[0]
        read_rows_into(getattr(module, attr).data, self.files[key], key, wanted, self._headers)
        unit.rows.update(wanted)
        self.row_bytes_read += len(wanted) * getattr(module, attr).shape[1] * 4

    def free(self, unit: Unit) -> None:
        import torch

        if unit.kind != "chunks":
            for module, attr, _ in unit.params:
                module._parameters[attr] = torch.nn.Parameter(module._parameters[attr].to("meta"), requires_grad=False)
        unit.loaded, unit.rows, unit.block = False, set(), None
        _return_freed_memory()

    def _block(self, unit: Unit, index: int) -> tuple[Any, Any]:
        """Weight (and bias) rows of block `index` of a chunked Linear, read when not held already."""
        if unit.block is None or unit.block[0] != index:
            unit.block = None
            _return_freed_memory()
            keys = {attr: key for _, attr, key in unit.params}
            rows = unit.blocks[index]
            weight = read_tensor(self.files[keys["weight"]], keys["weight"], self._headers, rows)
            bias = read_tensor(self.files[keys["bias"]], keys["bias"], self._headers, rows) if "bias" in keys else None
            self.bytes_read += 4 * (weight.numel() + (bias.numel() if bias is not None else 0))
            unit.block = (index, weight, bias)
        return unit.block[1], unit.block[2]

    def _chunked_forward(self, unit: Unit, input: Any) -> Any:
        import torch
        import torch.nn.functional as F

        outputs = []
        for index in range(len(unit.blocks)):
            # no local name for the block: a sequence waiting for its turn would keep it alive past its free
            outputs.append(F.linear(input, *self._block(unit, index)))
            unit.block_calls[index] = unit.block_calls.get(index, 0) + 1
            if unit.block_calls[index] % self.pace.sequences == 0:  # every sequence has applied this block
                unit.block = None
                _return_freed_memory()
            self.pace.after_unit()
        return torch.cat(outputs, dim=-1)

    def _before(self, unit: Unit, args: tuple, kwargs: dict) -> None:
        if unit.kind == "chunks":
            return
        if not unit.loaded:
            self.load(unit)
        if unit.kind == "rows":
            self.read_rows(unit, args[0] if args else kwargs["input"])

    def _after(self, unit: Unit) -> None:
        unit.calls += 1
        if unit.alone or unit.calls % self.pace.sequences == 0:  # every sequence has run through it
            self.free(unit)
        self.pace.after_unit()

    def attach(self) -> Callable[[], None]:
        """Load / free each unit around its forward (chunked Linears get their own forward); returns the function
        undoing it."""
        handles = []
        for unit in self.units:
            handles.append(unit.module.register_forward_pre_hook(
                lambda m, a, k, u=unit: self._before(u, a, k), with_kwargs=True))
            handles.append(unit.module.register_forward_hook(lambda m, a, o, u=unit: self._after(u)))
            if unit.kind == "chunks":
                unit.module.forward = lambda input, u=unit: self._chunked_forward(u, input)

        def detach() -> None:
            for handle in handles:
                handle.remove()
            for unit in self.units:
                unit.module.__dict__.pop("forward", None)

        return detach

    def reset(self) -> None:
        """Before a call over new sequences: no counts, nothing held."""
        for unit in self.units:
            unit.calls, unit.block_calls = 0, {}
            if unit.loaded or unit.block is not None:
                self.free(unit)

    def fp32_bytes(self) -> int:
        """The model's parameters in FP32 (tied ones once)."""
        return sum(p.numel() * 4 for p in {id(p): p for p in self.model.parameters()}.values())

    def pass_bytes(self) -> int:
        """What one pass reads apart from embedding rows: every other unit's parameters in FP32 (a tied embedding
        as lm_head)."""
        return sum(getattr(module, attr).numel() * 4 for unit in self.units if unit.kind != "rows"
                   for module, attr, _ in unit.params)


def _renamed_keys(model: Any, files: dict[str, Path]) -> dict[str, str]:
    """parameter name -> checkpoint key: each key as named, or as transformers' own renamings for the model
    (its checkpoint conversion mapping, applied on load: e.g. ERNIE-4.5's mlp.moe_statics -> mlp.gate.moe_statics)
    rename it. Merging converters (fused experts) are read_experts' part."""
    names = {key: key for key in files}
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    except (ImportError, AttributeError, TypeError):  # a transformers without conversion mappings: names as stored
        return names
    if renamings:
        for key in files:
            names.setdefault(rename_source_key(key, renamings, [])[0], key)
    return names


def _model_class(folder: Path) -> Any:
    """The auto class the in-memory reference loads the checkpoint with (runners/reference.py)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM

    from ..capture.multimodal import image_token_id
    from .reference_media import is_multimodal

    if image_token_id(folder) is not None:
        return AutoModelForImageTextToText
    return AutoModelForMultimodalLM if is_multimodal(folder) else AutoModelForCausalLM


VISION_PARTS = frozenset({"visual", "vision_tower", "vision_model", "vision"})


def _in_vision_tower(name: str) -> bool:
    return not VISION_PARTS.isdisjoint(name.split("."))
