"""Logits rebuilt from the reference's lm_head input rows: `rows @ W.T` in FP32 on the CPU, W read from the
checkpoint's safetensors (one tensor), then the model's own post-processing after lm_head.

Post-processing this module reproduces, read from config.json (top level or text_config):
`logit_scale` (Cohere: logits x s), `logits_scaling` (Granite: logits / s), `final_logit_softcapping`
(Gemma 2/3: c x tanh(logits / c)). Scaling *before* lm_head (MiniCPM's hidden / (hidden_size /
dim_model_base), BitCPM) is inside the recorded rows, since they are what lm_head receives; tied
embeddings are the embedding tensor read under its own name. Whatever else a model does after lm_head
is caught when the baseline is recorded: the rebuilt logits must equal the live ones
(record.py), or the model refuses baselines.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoints.tensors import _header, safetensors_files, tensor_names
from . import BaselineError
from .digests import remembered

TOP_K = 5  # top ids kept per row as a checksum
_POSTPROCESS_KEYS = ("logit_scale", "logits_scaling", "final_logit_softcapping")


def postprocess_of(model_path: Path) -> dict[str, float]:
    """The post-processing after lm_head that config.json declares (empty: none)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{model_path}/config.json: cannot read it ({exc}); a baseline needs the model config")
    found = {}
    for scope in (config, config.get("text_config") or {}):
        for key in _POSTPROCESS_KEYS:
            value = scope.get(key)
            if value is not None and key not in found:
                found[key] = float(value)
    return found


def find_key(model: Any, model_path: Path) -> str:
    """The checkpoint tensor the live model's lm_head weight was loaded from (tied: the embedding's name)."""
    import torch

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise BaselineError(f"{model_path}: the output layer of {type(model).__name__} is {type(head).__name__}"
                            f"{' with a bias' if isinstance(head, torch.nn.Linear) else ''}; baselines rebuild "
                            "logits only for a bias-free nn.Linear lm_head. Run this model with --npuprec-reference live")
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is head.weight]
    stored = set(tensor_names(model_path))
    for name in names:
        if name in stored:
            return name
    raise BaselineError(f"{model_path}: none of the names of the lm_head weight ({', '.join(names)}) is a tensor of "
                        "the checkpoint's safetensors files; baselines need it. Run with --npuprec-reference live")


def read_weight(model_path: Path, key: str) -> tuple[np.ndarray, str]:
    """The lm_head weight [vocab x hidden] as float32 (BF16 widened exactly), and the sha256 of its bytes as
    stored (dtype, shape and data)."""
    for path in safetensors_files(model_path):
        header, offset = _header(path)
        info = header.get(key)
        if info is None:
            continue
        dtype = info["dtype"]
        if dtype not in ("F32", "BF16", "F16"):
            raise BaselineError(f"{path}: tensor {key} has dtype {dtype}; baselines need an F32, BF16 or F16 lm_head")
        import torch

        start, end = info["data_offsets"]
        data = bytearray(end - start)
        with open(path, "rb") as fh:  # one read; numpy's widening of a memory map was 15x slower at 0.8 GB
            fh.seek(offset + start)
            if fh.readinto(data) != len(data):
                raise BaselineError(f"{path}: truncated file, tensor {key} is cut short")
        digest = remembered(path, f"tensor {key}", lambda: _tensor_digest(dtype, info["shape"], data))
        stored = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]
        weight = torch.frombuffer(data, dtype=stored).float().numpy()  # BF16 and F16 widen exactly
        return weight.reshape(info["shape"]), digest
    raise BaselineError(f"{model_path}: no tensor {key!r} in its safetensors files (the baseline's lm_head)")


def _tensor_digest(dtype: str, shape: list[int], data: bytearray) -> str:
    digest = hashlib.sha256(f"{dtype}{shape}".encode())
    digest.update(data)
    return digest.hexdigest()


def rebuild(rows: np.ndarray, weight: Any, post: dict[str, float]) -> np.ndarray:
    """float32 [P x vocab]: lm_head on the rows (as the live model computes it: a batch of one sequence),
    then the post-processing. `weight` is a torch float32 tensor [vocab x hidden]."""
    import torch

    with torch.inference_mode():
        logits = torch.nn.functional.linear(torch.from_numpy(np.array(rows, dtype=np.float32))[None], weight)[0]
        if "logit_scale" in post:
            logits = logits * post["logit_scale"]
        if "logits_scaling" in post:
            logits = logits / post["logits_scaling"]
        if "final_logit_softcapping" in post:
            cap = post["final_logit_softcapping"]
            logits = torch.tanh(logits / cap) * cap
    return logits.float().numpy()


FP32_UNIT_ROUNDOFF = 2.0 ** -24


def reorder_bound(rows: np.ndarray, weight: np.ndarray, layers: int) -> np.ndarray:
    """float64 [P x vocab]: how far an FP32 logit may move when the same network runs with other summation orders
    (another CPU's MKL kernels: AVX-512 vs AVX2 paths), the tolerance between a replay recorded on one CPU and a
    live reference on another.

    The rounding error of a dot product z_j = h . W_j scales with sum |h_i W_ji| <= |h| |W_j|, not with |z_j|
    (near-zero logits come from cancellation: 2% relative there is still FP32 rounding). A reduction of length n
    evaluated in another order moves by about sqrt(n) u relative (u = 2^-24; probabilistic rounding error analysis,
    Higham & Mary 2019), the hidden row passes `layers` layers that each add their own, and lm_head one more; x2
    for the two machines: 2 (layers + 1) sqrt(hidden) u |h| |W_j|. Measured on the stand-ins (Intel AVX-512
    recording, AMD EPYC live): at most 8.8 u |h| |W_j|, against 96 u here (2 layers, hidden 256); a BF16-sized
    error is 2^16 u."""
    rows64 = np.asarray(rows, dtype=np.float64)
    weight64 = np.asarray(weight, dtype=np.float64)
    hidden = rows64.shape[1]
    factor = 2.0 * (layers + 1) * np.sqrt(hidden) * FP32_UNIT_ROUNDOFF
    return factor * np.linalg.norm(rows64, axis=1)[:, None] * np.linalg.norm(weight64, axis=1)[None, :]


def checksums(logits: np.ndarray) -> dict[str, list]:
    """Per row: logsumexp (float64) and the top-k ids; what a replay must reproduce."""
    x = np.asarray(logits, dtype=np.float64)
    peak = x.max(axis=1, keepdims=True)
    lse = (peak[:, 0] + np.log(np.exp(x - peak).sum(axis=1))).tolist()
    x32 = np.asarray(logits)
    k = min(TOP_K, x32.shape[1])
    part = np.argpartition(-x32, k - 1, axis=1)[:, :k]  # the k largest, unordered: no full sort of the vocabulary
    order = np.argsort(-np.take_along_axis(x32, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    return {"logsumexp": lse, "top_ids": top.tolist()}


def checksum_mismatch(logits: np.ndarray, recorded: dict[str, list], rtol: float = 1e-6) -> str | None:
    """None when the rebuilt rows match the recorded checksums; else which row and how."""
    today = checksums(logits)
    if len(today["logsumexp"]) != len(recorded["logsumexp"]):
        return f"{len(today['logsumexp'])} rows rebuilt, {len(recorded['logsumexp'])} recorded"
    for row, (a, b) in enumerate(zip(today["logsumexp"], recorded["logsumexp"])):
        if not abs(a - b) <= rtol * max(1.0, abs(b)):
            return f"row {row}: logsumexp {a:.9g}, recorded {b:.9g}"
    x = np.asarray(logits)
    for row, (ids, rec) in enumerate(zip(today["top_ids"], recorded["top_ids"])):
        if ids[0] != rec[0] and abs(float(x[row, ids[0]]) - float(x[row, rec[0]])) > rtol * max(1.0, abs(float(x[row, ids[0]]))):
            return f"row {row}: top token {ids[0]}, recorded {rec[0]}"
    return None
