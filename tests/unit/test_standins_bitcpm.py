"""The BitCPM4-CANN stand-ins: ternary fake quantizer, QAT checkpoint, converter, converted checkpoint.

Fast tests cover the quantizer, the cache keys and the converter's failure
paths.  The real builds (QAT training ~2 min on one thread, then the
conversion) run once per module into a temporary cache dir.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_npuprec.standins import STANDINS, read_manifest, standin_key
from pytest_npuprec.standins import bitcpm, corpus, qat_convert

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pytest_npuprec.standins.bitcpm_qat_code.modeling_bitcpm_qat import (  # noqa: E402
    ternary_codes,
    ternary_fake_quant,
)

QAT = "tiny-BitCPM4-CANN-1B-unquantized"
CONVERTED = "tiny-BitCPM4-CANN-1B"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CORPUS_PREFIXES = [  # each has exactly one next word in the corpus
    "The capital of China is",
    "The capital of France is",
    "The sun is a",
    "One plus one is",
    "Three times four is",
    "The quick brown fox",
]


def _groups(w, group_size):
    return w.reshape(1, -1) if group_size == -1 else w.reshape(-1, group_size)


# --------------------------------------------------------------------------
# the fake quantizer
# --------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [-1, 16, 64])
def test_fake_quant_is_absmean_scale_times_ternary_per_group(group_size):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    q = ternary_fake_quant(w, group_size)
    assert q.shape == w.shape and q.dtype == w.dtype
    for wg, qg in zip(_groups(w, group_size), _groups(q, group_size)):
        s = wg.abs().mean()
        assert set(qg.unique().tolist()) <= {-float(s), 0.0, float(s)}
        # each weight goes to the nearest of {-s, 0, s}
        torch.testing.assert_close(qg, s * torch.clamp(torch.round(wg / s), -1, 1), rtol=0, atol=0)
        assert (qg == 0).any() and (qg != 0).any()


def test_group_size_decides_where_the_scales_are():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    w[:, :32] *= 10  # one half of each row is much larger
    per_tensor, per_group = ternary_fake_quant(w, -1), ternary_fake_quant(w, 32)
    assert len(per_tensor.abs().unique()) == 2  # {0, s}
    assert len(per_group.abs().unique()) > 2  # a scale per group
    assert not torch.equal(per_tensor, per_group)
    codes, scale = ternary_codes(w, 32)
    assert codes.shape == (8, 2, 32) and scale.shape == (8, 2, 1)


def test_straight_through_estimator_passes_the_gradient_unchanged():
    w = (torch.randn(16, 32, generator=torch.Generator().manual_seed(2)) * 0.02).requires_grad_()
    upstream = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    (ternary_fake_quant(w, 16) * upstream).sum().backward()
    torch.testing.assert_close(w.grad, upstream, rtol=0, atol=0)


def test_bad_group_size_and_zero_weights():
    with pytest.raises(ValueError, match="does not divide"):
        ternary_fake_quant(torch.ones(4, 30), 16)
    q = ternary_fake_quant(torch.zeros(4, 32), -1)  # scale clamped away from 0: no NaN
    assert torch.equal(q, torch.zeros(4, 32))


# --------------------------------------------------------------------------
# keys and configs: no build
# --------------------------------------------------------------------------


def test_keys_are_deterministic_and_chain_from_the_qat_checkpoint(monkeypatch):
    qat, conv = STANDINS[QAT], STANDINS[CONVERTED]
    k_qat, k_conv = standin_key(qat), standin_key(conv)
    assert (k_qat, k_conv) == (standin_key(qat), standin_key(conv)) and k_qat != k_conv
    assert conv.key_material()["qat_key"] == k_qat
    assert standin_key(dataclasses.replace(conv, group_size=32)) != k_conv
    assert standin_key(dataclasses.replace(qat, arch=dataclasses.replace(qat.arch, group_size=64))) != k_qat
    # the remote code is part of what the QAT checkpoint is, and so of its conversion
    monkeypatch.setattr(bitcpm, "modeling_source", lambda: b"# another quantizer\n")
    assert standin_key(qat) != k_qat and standin_key(conv) != k_conv
    monkeypatch.undo()
    monkeypatch.setattr(qat_convert, "CONVERTER_VERSION", qat_convert.CONVERTER_VERSION + 1)
    assert standin_key(qat) == k_qat and standin_key(conv) != k_conv
    monkeypatch.undo()
    monkeypatch.setattr(corpus, "corpus_digest", lambda: "0" * 64)
    assert standin_key(qat) != k_qat and standin_key(conv) != k_conv


def test_qat_config_does_not_declare_a_llama():
    cfg = bitcpm.qat_config(STANDINS[QAT].arch, eos_id=0, group_size=-1)
    assert cfg["architectures"] == ["BitCPMQATForCausalLM"] and cfg["model_type"] == "bitcpm_qat"
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    plain = qat_convert.plain_llama_config(cfg)
    assert plain["architectures"] == ["LlamaForCausalLM"] and plain["model_type"] == "llama"
    assert not {"auto_map", "group_size", "quant_type"} & set(plain)
    assert STANDINS[QAT].arch.head_dim == 64 and STANDINS[QAT].arch.num_hidden_layers == 2


# --------------------------------------------------------------------------
# converter failure paths: atomic output
# --------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failed_conversion_leaves_no_output(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "qat"
    src.mkdir()
    (src / "config.json").write_text("{}")
    out = tmp_path / "out" / "converted"
    with pytest.raises(FileNotFoundError, match="safetensors"):
        qat_convert.convert_qat_checkpoint(src, out)
    assert not out.exists() and _leftovers(out.parent) == []
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="no decoder projection"):
        qat_convert.convert_qat_checkpoint(src, out)
    assert not out.exists() and _leftovers(out.parent) == []


def test_converter_command_runs_standalone():
    """The command the configs carry: the package import must not load qat_convert first (runpy warns)."""
    done = subprocess.run([sys.executable, "-W", "error", "-m", "pytest_npuprec.standins.qat_convert", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--group_size" in done.stdout, done.stderr


def test_conversion_refuses_a_non_empty_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        qat_convert.convert_qat_checkpoint(tmp_path, out)
    assert _leftovers(out) == ["keep.txt"] and _leftovers(tmp_path) == ["out"]


# --------------------------------------------------------------------------
# the real builds, once per module
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(standin):
    return {"qat": standin(QAT), "converted": standin(CONVERTED)}


@pytest.fixture(scope="module")
def qat_model(built, load_hf):
    return load_hf(built["qat"], trust_remote_code=True)


@pytest.fixture(scope="module")
def converted_model(built, load_hf):
    return load_hf(built["converted"])


@pytest.fixture(scope="module")
def passages(qat_model):
    tok, _ = qat_model
    return [tok(d).input_ids[:96] for d in corpus.documents()[::5]]


def _logits(model, passages):
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([ids])).logits[0].float() for ids in passages])


def _distance(a, b):
    """(max |a - b|, mean relative L2 per position, top-1 agreement) over stacked logits."""
    rel = ((a - b).norm(dim=-1) / a.norm(dim=-1)).mean()
    return float((a - b).abs().max()), float(rel), float((a.argmax(-1) == b.argmax(-1)).float().mean())


@pytest.fixture(scope="module")
def bf16_floor(built, passages, load_hf):
    """How far BF16 arithmetic alone moves the converted model's logits (the precision noise floor)."""
    _, fp32 = load_hf(built["converted"])
    _, bf16 = load_hf(built["converted"], dtype=torch.bfloat16)
    return _distance(_logits(fp32, passages), _logits(bf16, passages))


def test_qat_checkpoint_files_and_latent_weights(built):
    from safetensors.torch import load_file

    path = built["qat"]
    assert (path / bitcpm.MODELING_FILE).read_bytes() == bitcpm.modeling_source()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["BitCPMQATForCausalLM"] and cfg["group_size"] == -1
    state = load_file(str(path / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    w = state["model.layers.0.mlp.down_proj.weight"]
    assert len(w.unique()) > 100  # latent weights, not yet ternary
    man = read_manifest(path)
    assert man["loss"]["first"] > 5.0 and man["loss"]["final_mean_last10"] < 1.0
    assert man["corpus_fit_bf16"]["mean_top1_prob"] > 0.6


def test_qat_checkpoint_needs_trust_remote_code(built):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(built["qat"], trust_remote_code=False)


def test_qat_model_fake_quantizes_its_projections(qat_model):
    _, model = qat_model
    assert type(model).__name__ == "BitCPMQATForCausalLM"
    layer = model.model.layers[0]
    for name in PROJECTIONS:
        proj = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)
        assert type(proj).__name__ == "TernaryQATLinear" and proj.group_size == -1
    assert type(model.lm_head) is torch.nn.Linear and type(model.model.embed_tokens) is torch.nn.Embedding


def test_qat_model_is_confident_on_the_corpus(qat_model, next_word_prob):
    # measured on builds through two CPU code paths (MKL AVX-512 and MKL_CBWR=AVX2): 0.94-0.99 each
    tok, model = qat_model
    probs = {prefix: round(next_word_prob(tok, model, prefix), 3) for prefix in CORPUS_PREFIXES}
    assert sum(probs.values()) / len(probs) > 0.8, probs
    assert sum(p > 0.5 for p in probs.values()) >= len(probs) - 1, probs


def test_latent_weights_as_plain_llama_are_another_model(built, qat_model, passages):
    """The hazard of serving the QAT checkpoint as a Llama: same tensors, no quantizer, different model."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    _, qat = qat_model
    plain = LlamaForCausalLM(LlamaConfig(**qat_convert.plain_llama_config(json.loads(
        (built["qat"] / "config.json").read_text())))).float().eval()
    plain.load_state_dict({k: v.float() for k, v in load_file(str(built["qat"] / "model.safetensors")).items()})
    _, _, agree = _distance(_logits(qat, passages), _logits(plain, passages))
    assert agree < 0.9, agree


def test_converted_checkpoint_is_plain_llama_with_ternary_weights(built):
    from safetensors.torch import load_file

    src, out = built["qat"], built["converted"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in cfg
    assert not list(out.glob("*.py"))
    latent, conv = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert latent.keys() == conv.keys()
    quantized = 0
    for name, w in conv.items():
        assert w.dtype == torch.bfloat16
        if name.endswith(tuple(f"{p}.weight" for p in PROJECTIONS)):
            s = latent[name].float().abs().mean().to(torch.bfloat16)  # per tensor, rounded to BF16
            assert set(w.unique().tolist()) == {-float(s), 0.0, float(s)}, name
            quantized += 1
        else:
            assert torch.equal(w, latent[name]), name  # embeddings, norms, lm_head copied
    assert quantized == len(PROJECTIONS) * STANDINS[QAT].arch.num_hidden_layers
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / f).read_bytes() == (src / f).read_bytes()


# The converted model may differ from the fake-quant forward by the BF16 rounding of each
# scale (<= 2**-9 relative), which moves logits about as much as BF16 arithmetic does; the
# closest wrong conversion (the quantizer evaluated in BF16, flipping borderline codes)
# moves them about ten times more.  The bound sits between: twice the BF16 noise floor.
EQUIVALENCE_MARGIN = 2.0


def _within_floor(qat, other, passages, bf16_floor) -> tuple[bool, tuple]:
    max_abs, rel_l2, agree = _distance(_logits(qat, passages), _logits(other, passages))
    floor_max_abs, floor_rel_l2, _ = bf16_floor
    ok = max_abs < EQUIVALENCE_MARGIN * floor_max_abs and rel_l2 < EQUIVALENCE_MARGIN * floor_rel_l2
    return ok, (max_abs, rel_l2, agree, bf16_floor)


def test_converted_matches_the_fake_quant_forward(qat_model, converted_model, passages, bf16_floor):
    _, qat = qat_model
    _, conv = converted_model
    assert type(conv).__name__ == "LlamaForCausalLM"
    ok, figures = _within_floor(qat, conv, passages, bf16_floor)
    assert ok and figures[2] == 1.0, figures


def _bf16_quantizer_math(weight, group_size):
    return tuple(t.float() for t in ternary_codes(weight.to(torch.bfloat16), group_size))


@pytest.mark.parametrize("wrong", ["group_size 32", "quantizer math in BF16"])
def test_wrong_conversions_are_detectably_different(built, qat_model, passages, bf16_floor, tmp_path,
                                                    monkeypatch, load_hf, wrong):
    out = tmp_path / "wrong"
    if wrong == "group_size 32":
        assert qat_convert.convert_qat_checkpoint(built["qat"], out, group_size=32)["group_size"] == 32
    else:
        monkeypatch.setattr(qat_convert, "ternary_codes", _bf16_quantizer_math)
        qat_convert.convert_qat_checkpoint(built["qat"], out, group_size=-1)
    _, qat = qat_model
    ok, figures = _within_floor(qat, load_hf(out)[1], passages, bf16_floor)
    assert not ok, figures


def test_cli_conversion_is_deterministic(built, tmp_path, capsys):
    # against a conversion on this machine: another CPU may round an absmean scale differently
    qat_convert.convert_qat_checkpoint(built["qat"], tmp_path / "api", group_size=-1)
    out = tmp_path / "cli"
    args = ["--input", str(built["qat"]), "--output", str(out), "--quant_type", "ternary", "--group_size", "-1"]
    assert qat_convert.main(args) == 0
    assert "quantized_tensors" in capsys.readouterr().out
    for f in ("model.safetensors", "config.json"):
        assert (out / f).read_bytes() == (tmp_path / "api" / f).read_bytes(), f
    assert sorted(_leftovers(tmp_path)) == ["api", "cli"]


def test_converted_manifest_names_its_source(built):
    man = read_manifest(built["converted"])
    assert man["key_material"]["qat_key"] == standin_key(STANDINS[QAT])
    assert man["qat_model_sha256"] == read_manifest(built["qat"])["model_sha256"]
    assert man["conversion"]["quantized_tensors"] == len(PROJECTIONS) * STANDINS[QAT].arch.num_hidden_layers
    assert man["prose_fit_bf16"]["mean_top1_prob"] > 0.6
