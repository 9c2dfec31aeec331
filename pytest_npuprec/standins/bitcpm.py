"""BitCPM4-CANN stand-ins: a ternary QAT checkpoint and its pseudo-quantized conversion.

``tiny-BitCPM4-CANN-1B-unquantized`` mirrors the QAT release: latent (not yet
ternary) BF16 weights plus ``modeling_bitcpm_qat.py`` (remote code) whose
decoder projections fake-quantize to ternary in forward.  It is trained from
scratch with the quantizer on (QAT), on tiny-llama's corpus and schedule.

Its config.json declares ``architectures: ["BitCPMQATForCausalLM"]`` and
``model_type: "bitcpm_qat"``, not Llama.  The tensors have exactly Llama's
names and shapes, so a Llama declaration would make vLLM (and transformers
without trust_remote_code) load the latent weights as a plain Llama, skip
the quantizer and serve a different model without any error.  With the
custom names transformers requires trust_remote_code and vLLM finds no
native implementation, and the model class refuses vLLM's Transformers
backend, so serving the QAT checkpoint fails loudly; only the converted
folder is servable.  (Measured: without that refusal and with an AutoModel
entry in auto_map, vLLM serves it through the Transformers backend, whose
own linear layers replace the quantizing ones: output identical to the
latent weights run as a plain Llama.)

``tiny-BitCPM4-CANN-1B`` is that converted folder (qat_convert.py): a plain
LlamaForCausalLM with ``s * {-1, 0, 1}`` BF16 projection weights.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar

from . import corpus
from .llama import LlamaArch, LlamaStandin, corpus_fit, hf_config
from .spec import standin_key
from .tokenizer import EOS_TOKEN
from .training import deterministic_torch

MODELING_FILE = "modeling_bitcpm_qat.py"
QAT_ARCHITECTURE = "BitCPMQATForCausalLM"
QAT_MODEL_TYPE = "bitcpm_qat"


def modeling_source() -> bytes:
    return resources.files(__package__).joinpath("bitcpm_qat_code").joinpath(MODELING_FILE).read_bytes()


def qat_config(arch: LlamaArch, eos_id: int, group_size: int) -> dict:
    """config.json of the QAT checkpoint: the Llama one, renamed, with remote code and group_size."""
    cfg = hf_config(arch, eos_id)
    cfg.update(
        architectures=[QAT_ARCHITECTURE],
        model_type=QAT_MODEL_TYPE,
        auto_map={
            "AutoConfig": f"{MODELING_FILE[:-3]}.BitCPMQATConfig",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{QAT_ARCHITECTURE}",
        },
        quant_type="ternary",
        group_size=group_size,
    )
    return cfg


# intermediate 704 (not tiny-llama's 688) so every projection's input dim divides by 32 and
# 64, and a grouped (wrong) conversion of this per-tensor QAT model can be tried.
@dataclass(frozen=True)
class QATArch(LlamaArch):
    intermediate_size: int = 704
    group_size: int = -1  # of the fake quantizer; -1 = one scale per tensor

    architecture: ClassVar[str] = QAT_ARCHITECTURE

    def hf_config(self, eos_id: int) -> dict:
        return qat_config(self, eos_id, self.group_size)

    def build_model(self, eos_id: int):
        """The QAT model (fake quantizer in its projections), FP32, from the shipped remote code."""
        from .bitcpm_qat_code import modeling_bitcpm_qat as qat

        skip = ("architectures", "model_type", "auto_map", "torch_dtype", "dtype")
        cfg = qat.BitCPMQATConfig(**{k: v for k, v in self.hf_config(eos_id).items() if k not in skip})
        cfg._attn_implementation = "sdpa"
        return qat.BitCPMQATForCausalLM(cfg).float()


@dataclass(frozen=True)
class BitCPMQATStandin(LlamaStandin):
    """Builder spec for the ternary QAT checkpoint (latent BF16 weights + remote code).

    Trained like tiny-llama (same corpus and schedule). Measured (1 thread, 2 shared cores):
    ternary projections with full-precision embeddings/lm_head fit the corpus as well as
    tiny-llama in 240 steps (corpus loss 0.058, top-1 0.98; sentence starts 0.27); 180 steps
    at lr 4e-3 left sentence starts at 0.43."""

    arch: LlamaArch = field(default_factory=QATArch)

    def key_material(self) -> dict:
        return dict(super().key_material(), kind="bitcpm-qat",
                    modeling_sha256=hashlib.sha256(modeling_source()).hexdigest())

    def build(self, out_dir: Path) -> dict:
        facts = super().build(out_dir)
        (Path(out_dir) / MODELING_FILE).write_bytes(modeling_source())
        return facts


@dataclass(frozen=True)
class BitCPMConvertedStandin:
    """Builder spec for the pseudo-quantized conversion of a QAT stand-in (built first by the cache)."""

    name: str
    description: str
    qat: BitCPMQATStandin
    group_size: int = -1

    @property
    def requires(self) -> tuple[BitCPMQATStandin]:
        return (self.qat,)

    def training_pieces(self) -> list[tuple[str, ...]]:
        """What the QAT checkpoint it converts was trained on."""
        return self.qat.training_pieces()

    def key_material(self) -> dict:
        # imported here: `python -m pytest_npuprec.standins.qat_convert` must find it not yet imported
        from . import qat_convert

        return {
            "kind": "bitcpm-qat-converted",
            "qat_standin": self.qat.name,
            "qat_key": standin_key(self.qat),
            "qat_key_material": self.qat.key_material(),
            "group_size": self.group_size,
            "converter_version": qat_convert.CONVERTER_VERSION,
        }

    def build(self, out_dir: Path, qat_dir: Path) -> dict:
        """Convert the built QAT checkpoint ``qat_dir`` into ``out_dir``."""
        from . import qat_convert

        out_dir, qat_dir = Path(out_dir), Path(qat_dir)
        t0 = time.perf_counter()
        facts = qat_convert.write_converted(qat_dir, out_dir, self.group_size)
        convert_seconds = time.perf_counter() - t0
        fit = _converted_fit(out_dir)
        return {
            "qat_standin": self.qat.name,
            "qat_dir": str(qat_dir),
            "qat_model_sha256": hashlib.sha256((qat_dir / "model.safetensors").read_bytes()).hexdigest(),
            "convert_seconds": round(convert_seconds, 2),
            "conversion": facts,
            "prose_fit_bf16": fit,
        }


def _converted_fit(folder: Path) -> dict:
    """Fit on the prose documents (no chat) of the converted checkpoint, loaded as the plain Llama it is."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS_TOKEN)
    with deterministic_torch(1, 0):
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        return corpus_fit(model, [tok.encode(d).ids + [eos_id] for d in corpus.documents()])

