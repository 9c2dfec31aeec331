"""The layer-by-layer diagnosis without an engine: msprobe's per-tensor columns, the first-divergence rule on
synthetic layer stacks, the layers taps and the one-layer fault on small torch modules, prompt choice, the report
section, and the option and fault spec parsing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_npuprec.measure.layers import KINDS, compare_tensors, measure_layers
from pytest_npuprec.report.diagnosis import add_diagnosis, diagnosis_rows
from pytest_npuprec.runners.device import Fault
from pytest_npuprec.verdicts.layers import judge_layers, leaves_floor

L, P, H = 6, 8, 64


def test_msprobe_columns_on_known_tensors():
    reference = np.array([1.0, -2.0, 0.0, 4.0])
    device = np.array([1.0005, -2.0, 1e-3, 4.4])
    cols = compare_tensors(device, reference)
    assert cols["MaxAbsErr"] == pytest.approx(0.4)
    # relative errors 5e-4, 0, 1e-3 / eps (a zero reference element counts as eps, as msprobe does), 0.1
    assert cols["MaxRelativeErr"] == pytest.approx(1e-3 / np.finfo(np.float32).eps)
    assert cols["One Thousandth Err Ratio"] == pytest.approx(2 / 4)
    assert cols["Cosine"] == pytest.approx(device @ reference / np.linalg.norm(device) / np.linalg.norm(reference))
    assert cols["RelL2"] == pytest.approx(np.linalg.norm(device - reference) / np.linalg.norm(reference))
    same = compare_tensors(reference, reference)
    assert same["Cosine"] == pytest.approx(1.0) and same["MaxAbsErr"] == 0 and same["One Thousandth Err Ratio"] == 1
    assert math.isnan(compare_tensors(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))["Cosine"])
    with pytest.raises(ValueError, match="4 elements vs reference of 3"):
        compare_tensors(reference, reference[:3])


def _stacks(seed: int = 0):
    """A reference [L x P x H] per kind, and a floor side: the reference with BF16-sized noise."""
    rng = np.random.default_rng(seed)
    reference = {k: rng.normal(0, 1, (L, P, H)) for k in KINDS}
    noise = lambda: {k: reference[k] * (1 + rng.normal(0, 3e-3, (L, P, H))) for k in KINDS}  # noqa: E731
    return reference, noise(), noise()


@pytest.mark.parametrize("layer", [0, 2, 5])
@pytest.mark.parametrize("block", ["attention", "mlp"])
def test_a_step_at_layer_k_is_named_at_k_with_its_block(layer, block):
    reference, floor, device = _stacks()
    other = "mlp" if block == "attention" else "attention"
    device[block][layer] = reference[block][layer] * 1.3  # the block's output scaled: cosine unchanged
    for later in range(layer, L):  # the residual stream carries it from there on
        device["output"][later] = reference["output"][later] + 0.2 * reference[block][layer]
    for later in range(layer + 1, L):
        device[other][later] = reference[other][later] * 1.1
    judged = judge_layers(measure_layers(device, reference, floor))
    assert (judged.first_divergent_layer, judged.block) == (layer, block)
    assert f"first divergent layer: {layer}" in judged.message and f"{block} moved it" in judged.message


def test_noise_at_the_floor_names_no_layer():
    reference, floor, device = _stacks(1)
    judged = judge_layers(measure_layers(device, reference, floor))
    assert judged.first_divergent_layer is None and judged.block is None
    assert judged.message.startswith("no decoder layer left its BF16 floor")
    # twice the floor's noise is still no divergence (the rule asks for 10x)
    rng = np.random.default_rng(2)
    louder = {k: reference[k] * (1 + rng.normal(0, 6e-3, (L, P, H))) for k in KINDS}
    assert judge_layers(measure_layers(louder, reference, floor)).first_divergent_layer is None


def test_the_mlp_of_a_moe_layer_is_called_experts_and_a_norm_step_names_no_block():
    reference, floor, device = _stacks(3)
    device["mlp"][1] = reference["mlp"][1] * 1.5
    device["output"][1:] = reference["output"][1:] + 0.3 * reference["mlp"][1]
    reference["moe"] = np.ones(L, dtype=bool)
    judged = judge_layers(measure_layers(device, reference, floor))
    assert (judged.first_divergent_layer, judged.block) == (1, "experts")

    reference, floor, device = _stacks(4)
    device["output"][3:] = reference["output"][3:] * 1.2 + 0.1  # neither block moved: a norm or residual add did
    judged = judge_layers(measure_layers(device, reference, floor))
    assert (judged.first_divergent_layer, judged.block) == (3, None)
    assert "the norms or residual adds" in judged.message


def test_a_non_finite_layer_diverges_and_the_absolute_minimum_holds_at_a_zero_floor():
    reference, floor, device = _stacks(5)
    device["output"][4, 0, 0] = np.inf
    judged = judge_layers(measure_layers(device, reference, floor))
    assert judged.first_divergent_layer == 4 and "not finite" in judged.message
    cols = {"Cosine": 1 - 5e-6, "RelL2": 0.005}
    exact = {"Cosine": 1.0, "RelL2": 0.0}
    assert not leaves_floor(cols, exact)  # floor 0, but below the absolute minimums: rounding
    assert leaves_floor({"Cosine": 1 - 2e-5, "RelL2": 0.005}, exact)


def test_sides_of_other_shapes_are_refused():
    reference, floor, device = _stacks()
    device["mlp"] = device["mlp"][:, :3]
    with pytest.raises(ValueError, match=r"layers tap: device mlp \(6, 3, 64\) vs reference \(6, 8, 64\)"):
        measure_layers(device, reference, floor)


def test_report_section_is_json_ready_and_tabled():
    reference, floor, device = _stacks()
    device["attention"][2] *= 1.5
    device["output"][2:] = reference["output"][2:] + 0.3 * reference["attention"][2]
    device["output"][5, 0, 0] = np.nan
    rows = measure_layers(device, reference, floor)
    judged = judge_layers(rows)
    section = {"prompt_id": "p1", "why": "test", "positions": P, "rule": "r", "message": judged.message,
               "first_divergent_layer": judged.first_divergent_layer, "block": judged.block,
               "layers": [{"layer": r.layer, "moe": r.moe, **{k: {"device": r.device[k], "floor": r.floor[k],
                                                                  "diverged": j.diverged[k],
                                                                  "floor_ratio": j.ratio[k]} for k in KINDS}}
                          for r, j in zip(rows, judged.judged)]}
    report: dict = {}
    add_diagnosis(report, section)
    json.dumps(report, allow_nan=False)  # NaN / inf became null
    header, table = diagnosis_rows(report, every_block=False)
    assert header[:3] == ["layer", "block", "Cosine"] and "One Thousandth Err Ratio" in header
    assert [r[:2] for r in table if r[0] == "2"] == [["2", "output"], ["2", "attention"], ["2", "mlp"]]
    assert len(diagnosis_rows(report, every_block=True)[1]) == 3 * L


def test_layer_fault_specs():
    assert Fault.parse("layer_scale=1.5:layer=2:block=experts@m") == Fault("layer_scale", 1.5, "m", 2, "mlp")
    assert Fault.parse("layer_scale:block=attention").place() == {"block": "attention"}
    assert Fault.parse("rope_theta").place() == {}
    for spec, message in [("rope_theta:layer=1", "rope_theta is not confined to a layer"),
                          ("layer_scale:layer=x", "layer='x': expected a decoder layer index"),
                          ("layer_scale:block=ffn", "block='ffn': expected one of attention, mlp, experts"),
                          ("layer_scale:layer=1:layer=2", r"expected layer=N or block=B \(each once\)")]:
        with pytest.raises(ValueError, match=message):
            Fault.parse(spec)


@pytest.mark.parametrize("args, message", [
    (["--npuprec-diagnose=sometimes"], "expected one of auto, always, never"),
    (["--npuprec-fault", "layer_scale:block=ffn"], "block='ffn'"),
])
def test_bad_diagnose_and_layer_fault_options_are_usage_errors(pytester, args, message):
    result = pytester.runpytest("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


torch = pytest.importorskip("torch")


class VllmLikeLayer(torch.nn.Module):
    """vLLM's decoder-layer convention: returns (mlp output, residual), the add left to the next layer's fused
    add-norm, which overwrites both tensors in place (as vllm's fused_add_rms_norm does)."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.self_attn = torch.nn.Linear(H, H)
        self.mlp = torch.nn.Linear(H, H)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, hidden, residual):
        if residual is None:
            residual = hidden
        else:
            residual.add_(hidden)  # in place, like the fused add-norm
            hidden.zero_()
        attn = self.self_attn(residual)
        residual = residual + attn
        return self.mlp(residual), residual


class VllmLikeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(VllmLikeLayer(i) for i in range(4))

    def forward(self, x):
        hidden, residual = x.clone(), None
        for layer in self.model.layers:
            hidden, residual = layer(hidden, residual)
        return hidden + residual

    def reference_stream(self, x):
        """The residual stream after each layer, computed the transformers way."""
        out, stream = [], x.clone()
        for layer in self.model.layers:
            stream = stream + layer.self_attn(stream)
            stream = stream + layer.mlp(stream)
            out.append(stream)
        return out


def test_worker_tap_sums_vllms_hidden_and_residual_before_they_are_overwritten(tmp_path):
    from pytest_npuprec.runners.worker_taps.layers import install

    model = VllmLikeModel()
    tap = install(model)
    assert tap is not None and len(tap.layers) == 4 and tap.moe == [False] * 4
    x = torch.randn(5, H)
    tap.reset()  # arming installs the hooks
    tap.start_pass()
    with torch.no_grad():
        model(x)
        rows = torch.tensor([1, 3])
        assert tap.take(rows, [0, 0], [10, 12]) is None
        expected = model.reference_stream(x)
    tap.write(0, [10, 12], str(tmp_path / "d.npz"))
    arrays = dict(np.load(tmp_path / "d.npz"))
    assert arrays["output"].shape == (4, 2, H)
    for i in range(4):
        np.testing.assert_allclose(arrays["output"][i], expected[i][rows].numpy(), rtol=1e-5, atol=1e-5)


def test_worker_tap_reports_a_pass_its_hooks_did_not_see():
    from pytest_npuprec.runners.worker_taps.layers import install

    tap = install(VllmLikeModel())
    tap.reset()
    tap.start_pass()  # a compiled stack: the hooks never run
    assert "needs an eager engine" in tap.take(torch.tensor([0]), [0], [0])
    assert install(torch.nn.Linear(2, 2)) is None


def test_layer_scale_fault_scales_one_block_of_one_layer():
    from pytest_npuprec.runners.faults.layers import layer_scale

    clean, faulty = VllmLikeModel(), VllmLikeModel()
    assert layer_scale(faulty, 1.5, layer=2, block="attention") == "decoder layer 2 attention output x1.5"
    assert "NOT APPLIED" in layer_scale(VllmLikeModel(), 1.5, eager=False)
    x = torch.randn(3, H)
    with torch.no_grad():
        a, b = clean.reference_stream(x), faulty.reference_stream(x)
    torch.testing.assert_close(a[1], b[1])  # layers before it untouched
    assert not torch.allclose(a[2], b[2])
    with pytest.raises(RuntimeError, match=r"layer=7, but the model has decoder layers 0..3"):
        layer_scale(VllmLikeModel(), 1.5, layer=7)


def test_reference_tap_matches_transformers_hidden_states(standin, tmp_path):
    from transformers import AutoModelForCausalLM

    from pytest_npuprec.runners.reference_taps import layers

    model = AutoModelForCausalLM.from_pretrained(str(standin("tiny-llama")), dtype=torch.float32).eval()
    ids = torch.tensor([list(range(5, 25))])
    keep = torch.tensor([3, 7, 19])
    ours = lambda: [h for m in model.modules() for h in m._forward_hooks.values()  # noqa: E731
                    if getattr(h, "__qualname__", "").startswith("recording.")]  # transformers adds its own
    with torch.inference_mode(), layers.recording(model):
        output = model(input_ids=ids, output_hidden_states=True)
    layers.write(model, output, keep, tmp_path / "r.npz")
    arrays = dict(np.load(tmp_path / "r.npz"))
    assert arrays["output"].shape == (2, 3, 256) and not arrays["moe"].any()
    # hidden_states[i + 1] is layer i's output, except the last (transformers applies the final norm to it)
    np.testing.assert_allclose(arrays["output"][0], output.hidden_states[1][0, keep].numpy(), rtol=1e-6)
    assert ours() == []  # removed after the forward


def test_the_prompt_diagnosed_is_the_worst_of_the_failing_logit_check_that_misses_most(make_capture,
                                                                                      confident_logits):
    from pytest_npuprec.config.schema import Threshold
    from pytest_npuprec.diagnose import failing_logit_checks, wanted, worst_prompt
    from pytest_npuprec.measure.thresholds import measure
    from pytest_npuprec.verdicts import judge_thresholds

    device = [x.copy() for x in confident_logits]
    device[1][2] += np.random.default_rng(0).normal(0, 1.0, 50)  # prompt index 1 is the worst
    measured = measure(make_capture(confident_logits, device))
    clean = judge_thresholds((Threshold("kl_divergence", "max", 10.0, "max", id="kl"),), measured)
    assert not failing_logit_checks(clean) and not wanted("auto", clean) and wanted("always", clean)
    assert worst_prompt(clean, measured)[0] == 1  # no failing check: the largest KL
    red = judge_thresholds((Threshold("token_agreement", "min", 2.0, "mean", id="tokens"),
                            Threshold("cosine_similarity", "min", 0.9999, "mean", id="cos"),
                            Threshold("kl_divergence", "max", 1e-9, "max", id="kl")), measured)
    assert [v.check_id for v in failing_logit_checks(red)] == ["cos", "kl"]  # not the token check
    assert wanted("auto", red) and not wanted("never", red)
    index, why = worst_prompt(red, measured)
    assert index == 1 and "failing check kl" in why  # misses its bound by far more than cos does
