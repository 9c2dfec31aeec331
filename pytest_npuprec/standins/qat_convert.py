"""Fuse a ternary QAT checkpoint into a plain, pseudo-quantized Llama (the role of qat-convert.py).

The QAT checkpoint (``bitcpm_qat_code/modeling_bitcpm_qat.py``, loaded with
trust_remote_code) stores latent weights and fake-quantizes the decoder
projections in forward.  The converted folder is a plain LlamaForCausalLM
(no auto_map, no remote code) whose projection weights already are
``s * {-1, 0, 1}`` in BF16, with ``s`` (one per tensor, or per group of
``group_size`` input elements) rounded to BF16 so every tensor or group holds
exactly the values ``{-s, 0, s}``.  Everything else is copied unchanged.

The only intended difference from the fake-quant forward is that BF16
rounding of ``s`` (relative error <= 2**-9).  The converter does not read the
group size from the checkpoint: like the real tool it takes ``--group_size``,
and a wrong one yields a loadable but different model, which is what a
QAT-equivalence check has to catch.

    python -m pytest_npuprec.standins.qat_convert --input QAT_DIR --output OUT_DIR \
        --quant_type ternary --group_size -1
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from ..atomic import staged_dir

# Version of the conversion procedure (part of the converted stand-in's cache key).
CONVERTER_VERSION = 1

QUANTIZED_WEIGHT = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.weight$")
# config.json keys that only mean something to the QAT remote code
_QAT_CONFIG_KEYS = ("auto_map", "group_size", "quant_type")
# files not carried over: weights (rewritten), remote code, the stand-in cache's manifest
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".py", ".pyc")
_SKIPPED_NAMES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "npuprec_manifest.json")


def convert_qat_checkpoint(src_dir, out_dir, group_size: int = -1) -> dict:
    """Convert the QAT checkpoint ``src_dir`` into a pseudo-quantized Llama at ``out_dir``.

    Written atomically: into a temp folder next to ``out_dir``, renamed into
    place at the end, so a failed conversion leaves no ``out_dir``.
    ``out_dir`` must not exist or be an empty folder.  Returns conversion facts.
    """
    with staged_dir(out_dir, existing="refuse") as tmp:
        return write_converted(Path(src_dir), tmp, group_size)


def write_converted(src: Path, dest: Path, group_size: int = -1) -> dict:
    """Write the converted checkpoint's files into the existing folder ``dest`` (not atomic)."""
    import torch
    from safetensors.torch import load_file, save_file

    src, dest = Path(src), Path(dest)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors weights in {src}")
    state: dict = {}
    for shard in shards:
        state.update(load_file(str(shard)))

    converted, scales, zero_fraction = {}, {}, {}
    for name, tensor in state.items():
        if not QUANTIZED_WEIGHT.match(name):
            converted[name] = tensor.contiguous()
            continue
        codes, scale = ternary_codes(tensor.float(), group_size)
        scale = scale.to(torch.bfloat16)
        # codes are exactly -1/0/1, so the BF16 product is exact: values are {-s, 0, s}
        converted[name] = (codes.to(torch.bfloat16) * scale).reshape(tensor.shape).contiguous()
        scales[name] = float(scale.float().mean()) if group_size != -1 else float(scale)
        zero_fraction[name] = round(float((codes == 0).float().mean()), 4)
    if not scales:
        raise ValueError(f"{src}: no decoder projection weights (q/k/v/o/gate/up/down_proj) to quantize")

    save_file(converted, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(plain_llama_config(config), indent=2) + "\n", encoding="utf-8")
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in _SKIPPED_NAMES and not f.name.endswith(_SKIPPED_SUFFIXES):
            shutil.copyfile(f, dest / f.name)
    return {
        "quant_type": "ternary",
        "group_size": group_size,
        "quantized_tensors": len(scales),
        "scale_mean_by_tensor": {k: round(v, 6) for k, v in scales.items()},
        "zero_fraction_mean": round(sum(zero_fraction.values()) / len(zero_fraction), 4),
    }


def plain_llama_config(qat_config: dict) -> dict:
    """The QAT config.json as a plain LlamaForCausalLM one (no remote code, BF16)."""
    cfg = {k: v for k, v in qat_config.items() if k not in _QAT_CONFIG_KEYS}
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16", dtype="bfloat16")
    return cfg


def ternary_codes(weight, group_size: int):
    """The QAT forward's own quantizer (one source of truth for where each weight rounds to)."""
    from .bitcpm_qat_code.modeling_bitcpm_qat import ternary_codes as codes_fn

    return codes_fn(weight, group_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path, help="QAT checkpoint folder")
    parser.add_argument("--output", required=True, type=Path, help="folder to create (must not exist, or be empty)")
    parser.add_argument("--quant_type", default="ternary", choices=["ternary"])
    parser.add_argument("--group_size", default=-1, type=int, help="input elements per scale; -1 = per tensor")
    args = parser.parse_args(argv)
    try:
        facts = convert_qat_checkpoint(args.input, args.output, args.group_size)
    except (OSError, ValueError) as exc:
        print(f"qat_convert: {exc}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in facts.items() if k != "scale_mean_by_tensor"}
    print(f"wrote {args.output}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
