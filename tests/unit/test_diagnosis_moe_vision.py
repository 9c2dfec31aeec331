"""The layer-by-layer diagnosis inside MoE layers (router vs experts) and a vision tower's blocks, without an
engine: the route comparison and its BF16 tie margin, the naming rule on synthetic stacks, the taps and faults on
small torch modules shaped like vLLM's, the report rows, and the fault specs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pytest_npuprec.measure.layer_routes import compare_routes
from pytest_npuprec.measure.layers import KINDS, measure_layers, measure_vision
from pytest_npuprec.report.diagnosis import add_diagnosis, diagnosis_rows
from pytest_npuprec.runners.device import Fault
from pytest_npuprec.verdicts.layers import judge_layers

L, P, H, E, K = 3, 8, 32, 8, 2


def test_a_flip_at_a_reference_margin_inside_the_tie_margin_is_a_tie():
    logits = np.array([[3.0, 2.0, 1.99, 0.0], [3.0, 2.0, 1.0, 0.0]])  # margins (2nd vs 3rd): 0.01, 1.0
    reference = np.array([[0, 1], [0, 1]])
    flipped = np.array([[0, 2], [0, 2]])
    routes = compare_routes(flipped, reference, logits, tie_margin=0.02)
    assert routes == {"agreement": 0.0, "flips_beyond_ties": 1, "flips": 2}
    assert compare_routes(np.array([[1, 0], [1, 0]]), reference, logits, 0.02)["agreement"] == 1.0  # a set
    with pytest.raises(ValueError, match="chosen experts"):
        compare_routes(flipped[:, :1], reference, logits, 0.02)


def _moe_stacks(seed: int = 0):
    """Reference, floor and device: every kind [L x P x H] with BF16-sized noise, and MoE routers in layers 1, 2."""
    rng = np.random.default_rng(seed)
    reference = {k: rng.normal(0, 1, (L, P, H)) for k in KINDS}
    logits = rng.normal(0, 2, (2, P, E))
    reference.update(moe=np.array([False, True, True]), router_layers=np.array([1, 2]), router_logits=logits,
                     router_ids=np.argsort(-logits, axis=-1)[..., :K])

    def noisy():
        side = {k: reference[k] * (1 + rng.normal(0, 3e-3, (L, P, H))) for k in KINDS}
        side.update({k: reference[k].copy() for k in ("moe", "router_layers", "router_ids")},
                    router_logits=logits + rng.normal(0, 1e-3, logits.shape))
        return side

    return reference, noisy(), noisy()


def _diverge_mlp(device, reference, layer):
    device["mlp"][layer] = reference["mlp"][layer] * 1.5
    device["output"][layer:] = reference["output"][layer:] + 0.3 * reference["mlp"][layer]


def test_a_moe_layer_whose_router_chose_other_experts_is_named_router():
    reference, floor, device = _moe_stacks()
    _diverge_mlp(device, reference, 2)
    ranked = np.argsort(-reference["router_logits"][1], axis=-1)
    device["router_ids"][1] = np.stack([ranked[:, 0], ranked[:, 3]], axis=-1)  # the 4th expert for the 2nd: no tie
    judged = judge_layers(measure_layers(device, reference, floor))
    assert (judged.first_divergent_layer, judged.block, judged.where) == (2, "router", "layer 2, router")
    assert f"{P} of {P} routes chose other experts beyond BF16 ties" in judged.message
    assert judged.judged[2].diverged["router"] and not judged.judged[1].diverged["router"]


def test_router_logits_off_their_floor_are_the_router_too():
    reference, floor, device = _moe_stacks(1)
    _diverge_mlp(device, reference, 1)
    device["router_logits"][0] = reference["router_logits"][0] * 1.2  # same experts chosen, logits wrong
    assert judge_layers(measure_layers(device, reference, floor)).where == "layer 1, router"


def test_a_moe_layer_routed_as_the_reference_is_named_experts():
    reference, floor, device = _moe_stacks(2)
    _diverge_mlp(device, reference, 1)
    rows = measure_layers(device, reference, floor)
    assert rows[1].routes["device"] == {"agreement": 1.0, "flips_beyond_ties": 0, "flips": 0}
    assert rows[0].routes is None and "router" not in rows[0].device  # the dense layer has no router
    judged = judge_layers(rows)
    assert (judged.first_divergent_layer, judged.block, judged.where) == (1, "experts", "layer 1, experts")


def test_a_router_flipping_routes_under_layers_at_their_floor_is_still_said():
    reference, floor, device = _moe_stacks(7)
    ranked = np.argsort(-reference["router_logits"][0], axis=-1)
    device["router_ids"][0] = np.stack([ranked[:, 0], ranked[:, 5]], axis=-1)
    judged = judge_layers(measure_layers(device, reference, floor))
    assert judged.where is None and "the routers of MoE layers [1] left their floor all the same" in judged.message


def test_routers_on_other_layers_are_refused():
    reference, floor, device = _moe_stacks()
    device["router_layers"] = np.array([0, 1])
    with pytest.raises(ValueError, match=r"device's MoE routers \[0, 1\] vs the reference's \[1, 2\]"):
        measure_layers(device, reference, floor)


def _vision(reference, floor, device, blocks=2, patches=36, width=16, seed=0):
    rng = np.random.default_rng(seed)
    for kind in ("output", "attention", "mlp"):
        ref = rng.normal(0, 1, (blocks, patches, width))
        reference[f"vision_{kind}"] = ref
        floor[f"vision_{kind}"] = ref * (1 + rng.normal(0, 3e-3, ref.shape))
        device[f"vision_{kind}"] = ref * (1 + rng.normal(0, 3e-3, ref.shape))


@pytest.mark.parametrize("part", ["attention", "mlp"])
def test_a_vision_block_off_its_floor_is_named_before_the_decoder(part):
    reference, floor, device = _moe_stacks(3)
    _vision(reference, floor, device)
    device[f"vision_{part}"][1] *= 1.5
    device["vision_output"][1] = reference["vision_output"][1] + 0.3 * reference[f"vision_{part}"][1]
    _diverge_mlp(device, reference, 0)  # the decoder follows the tower
    vision = measure_vision(device, reference, floor)
    judged = judge_layers(measure_layers(device, reference, floor), vision)
    assert judged.where == f"vision block 1, {part}" and judged.first_divergent_vision_block == 1
    assert judged.message.startswith("first divergent: vision block 1") and "decoder layer: 0" in judged.message
    assert [j.diverged["output"] for j in judged.vision_judged] == [False, True]


def test_a_tower_at_its_floor_leaves_the_decoder_named_and_no_tower_no_rows():
    reference, floor, device = _moe_stacks(4)
    assert measure_vision(device, reference, floor) == []
    _vision(reference, floor, device)
    _diverge_mlp(device, reference, 2)
    judged = judge_layers(measure_layers(device, reference, floor), measure_vision(device, reference, floor))
    assert judged.where == "layer 2, experts" and judged.first_divergent_vision_block is None
    ref, fl, dev = _moe_stacks(5)
    _vision(ref, fl, dev)
    judged = judge_layers(measure_layers(dev, ref, fl), measure_vision(dev, ref, fl))
    assert judged.where is None and judged.message.startswith("no vision block nor decoder layer left")
    del device["vision_mlp"]
    with pytest.raises(ValueError, match=r"device's vision tower gave mlp nothing vs the reference's \(2, 36, 16\)"):
        measure_vision(device, reference, floor)


def test_report_rows_show_vision_blocks_first_and_the_router_with_its_flips():
    from pytest_npuprec.diagnose import _entry

    reference, floor, device = _moe_stacks(6)
    _vision(reference, floor, device)
    _diverge_mlp(device, reference, 2)
    device["router_ids"][1] = device["router_ids"][1][:, ::-1]  # the same sets: no flip
    rows, vision = measure_layers(device, reference, floor), measure_vision(device, reference, floor)
    judged = judge_layers(rows, vision)
    section = {"message": judged.message, "rule": "r", "where": judged.where,
               "first_divergent_layer": judged.first_divergent_layer, "block": judged.block,
               "first_divergent_vision_block": judged.first_divergent_vision_block,
               "layers": [_entry("layer", r, j) for r, j in zip(rows, judged.judged)],
               "vision_blocks": [_entry("block", r, j) for r, j in zip(vision, judged.vision_judged)]}
    report: dict = {}
    add_diagnosis(report, section)
    json.dumps(report, allow_nan=False)
    assert report["diagnosis"]["layers"][2]["router"]["routes"]["device"]["flips_beyond_ties"] == 0
    _, table = diagnosis_rows(report, every_block=False)
    assert [r[:2] for r in table] == [["vision 0", "output"], ["vision 1", "output"], ["0", "output"],
                                      ["1", "output"], ["2", "output"], ["2", "attention"], ["2", "router"],
                                      ["2", "experts"]]
    assert table[6][-1] == f"(0/{P} routes flipped beyond ties, floor 0)" and table[7][-1] == "YES"
    assert len(diagnosis_rows(report, every_block=True)[1]) == 2 * 3 + 3 + 2 * 4

    from pytest_npuprec.report.html import _layer_chart

    chart = _layer_chart(report["diagnosis"])
    assert "each vision block" in chart and "router logits" in chart
    assert "first divergent: <b>layer 2, experts</b>" in chart


def test_moe_and_vision_fault_specs():
    assert Fault.parse("expert_scale=2:layer=1").place() == {"layer": 1}
    assert Fault.parse("router_lowprec:layer=0@m") == Fault("router_lowprec", 0.03, "m", 0, None)
    assert Fault.parse("vision_scale=1.5:layer=1:block=attention").place() == {"layer": 1, "block": "attention"}
    for spec, message in [("expert_scale:layer=1:block=mlp", "router fault, confined to a MoE layer"),
                          ("vision_scale:block=experts", "block='experts': expected one of attention, mlp"),
                          ("image_norm:layer=1", "image_norm is not confined to a layer")]:
        with pytest.raises(ValueError, match=message):
            Fault.parse(spec)


torch = pytest.importorskip("torch")


class Router:
    """vLLM's FusedMoERouter surface: select_experts(hidden, router_logits) -> (weights, ids), via
    _compute_routing (where runners/faults/moe.py wraps)."""

    renormalize = True
    global_num_experts = E

    def select_experts(self, hidden_states, router_logits):
        return self._compute_routing(hidden_states, router_logits)

    def _compute_routing(self, hidden_states, router_logits):
        ids = router_logits.topk(K, dim=-1).indices  # on the logits: a saturated softmax would tie at 0
        weights = torch.softmax(router_logits, -1).gather(1, ids)
        return weights / weights.sum(-1, keepdim=True).clamp_min(1e-30), ids


class MoeLayer(torch.nn.Module):
    def __init__(self, seed: int, moe: bool):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.self_attn = torch.nn.Linear(H, H)
        self.mlp = torch.nn.Module()
        self.mlp.gate = torch.nn.Linear(H, E, bias=False)
        self.mlp.experts = torch.nn.ModuleList(torch.nn.Linear(H, H) for _ in range(E))
        self.mlp.experts.router = Router() if moe else None
        if not moe:
            del self.mlp.experts
        self.mlp.forward = self._mlp
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def _mlp(self, x):
        if not hasattr(self.mlp, "experts"):
            return self.mlp.gate(x)[:, :1] * x
        weights, ids = self.mlp.experts.router.select_experts(x, self.mlp.gate(x))
        out = torch.zeros_like(x)
        for slot in range(K):
            for e in range(E):
                chosen = ids[:, slot] == e
                out[chosen] += weights[chosen, slot, None] * self.mlp.experts[e](x[chosen])
        return out

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class MoeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(MoeLayer(i, moe=i > 0) for i in range(L))

    def forward(self, x):
        for layer in self.model.layers:
            x = layer(x)
        return x


def test_worker_tap_keeps_each_moe_layers_router_logits_and_the_experts_it_ran_with(tmp_path):
    from pytest_npuprec.runners.faults.moe import router_long
    from pytest_npuprec.runners.worker_taps.layers import install

    model = MoeModel()
    assert "MoE layer 2" in router_long(model, 2, layer=2)  # tokens after the 2nd routed to the next experts
    tap = install(model)
    tap.reset()
    tap.start_pass()
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
        rows = torch.tensor([1, 4])
        assert tap.take(rows, [0, 0], [3, 6]) is None
        hidden1 = x + model.model.layers[0].self_attn(x)
        hidden1 = hidden1 + model.model.layers[0].mlp(hidden1)
        hidden1 = hidden1 + model.model.layers[1].self_attn(hidden1)
        logits1 = model.model.layers[1].mlp.gate(hidden1)
    tap.write(0, [3, 6], str(tmp_path / "d.npz"))
    arrays = dict(np.load(tmp_path / "d.npz"))
    assert list(arrays["router_layers"]) == [1, 2] and arrays["router_ids"].shape == (2, 2, K)
    np.testing.assert_allclose(arrays["router_logits"][0], logits1[rows].numpy(), rtol=1e-5, atol=1e-6)
    assert sorted(arrays["router_ids"][0][0]) == sorted(logits1[1].topk(K).indices.tolist())
    clean_ids = arrays["router_logits"][1].argsort(-1)[:, ::-1][:, :K]
    assert sorted(arrays["router_ids"][1][1]) == sorted((clean_ids[1] + 1) % E)  # the 5th token: faulty ids seen
    with pytest.raises(RuntimeError, match=r"layer=0, but the MoE layers are \[1, 2\]"):
        router_long(MoeModel(), 2, layer=0)


class VisionBlock(torch.nn.Module):
    """Qwen-VL's vision block: x + attn(norm1(x)), then + mlp(norm2(x)); `compiled` calls forward directly, as
    vLLM's support_torch_compile __call__ does (no module hooks on the block itself)."""

    def __init__(self, seed: int, compiled: bool):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.norm1, self.norm2 = torch.nn.LayerNorm(16), torch.nn.LayerNorm(16)
        self.attn, self.mlp = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
        self.compiled = compiled
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def __call__(self, x):
        return self.forward(x) if self.compiled else super().__call__(x)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionModel(torch.nn.Module):
    def __init__(self, compiled: bool = True):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.blocks = torch.nn.ModuleList(VisionBlock(i, compiled) for i in range(2))

    def forward(self, x):
        outs = []
        for block in self.visual.blocks:
            x = block(x)
            outs.append(x)
        return outs


def test_vision_blocks_are_captured_when_the_block_itself_bypasses_hooks_and_a_block_fault_stays_in_its_block():
    from pytest_npuprec.runners.faults.vision import vision_scale
    from pytest_npuprec.runners.worker_taps.vision_blocks import VisionWatch

    clean, faulty = VisionModel(), VisionModel()
    assert vision_scale(faulty, 1.5, layer=1, block="attention") == "vision block 1 attention output x1.5"
    watch = VisionWatch(faulty)
    watch.install()
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = clean(x), faulty(x)
    arrays = watch.arrays()
    assert arrays["vision_output"].shape == (2, 6, 16)
    np.testing.assert_allclose(arrays["vision_output"][1], got[1].numpy(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(want[0], got[0])  # block 0 untouched
    assert not torch.allclose(want[1], got[1])
    with torch.no_grad():
        attn = clean.visual.blocks[1].attn(clean.visual.blocks[1].norm1(want[0]))
    np.testing.assert_allclose(arrays["vision_attention"][1], 1.5 * attn.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"layer=4, but the vision tower has blocks 0..1"):
        vision_scale(VisionModel(), 1.5, layer=4)
