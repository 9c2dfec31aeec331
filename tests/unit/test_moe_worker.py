"""Worker-side MoE code without an engine: the routing tap and the MoE faults on routers shaped like vLLM's
(FusedMoERouter: select_experts -> _compute_routing), and the transformers reference tap."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_npuprec.runners.faults import moe as moe_faults  # noqa: E402
from pytest_npuprec.runners.worker_taps.routing import install, moe_routers  # noqa: E402

E, K = 8, 2


class FakeRouter:
    """vLLM's BaseRouter shape: public select_experts calls the instance's _compute_routing (softmax top-k,
    renormalised)."""

    global_num_experts = E

    def _compute_routing(self, hidden_states, router_logits, indices_type=None, *, input_ids=None):
        values, ids = torch.topk(router_logits, K, dim=-1)
        return torch.softmax(values.float(), dim=-1), ids.to(torch.int32)

    def select_experts(self, hidden_states, router_logits, topk_indices_dtype=None, *, input_ids=None):
        return self._compute_routing(hidden_states, router_logits, topk_indices_dtype, input_ids=input_ids)


class Experts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.router = FakeRouter()


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.experts = Experts()


class FakeModel(torch.nn.Module):
    def __init__(self, layers: int = 2):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(Layer() for _ in range(layers))

    def route(self, logits):
        """One forward pass: every layer routes `logits` [tokens x E]."""
        return [layer.mlp.experts.router.select_experts(None, logits) for layer in self.model.layers]


def test_routers_found_in_layer_order_and_a_dense_model_has_none():
    model = FakeModel(3)
    assert [layer for layer, _ in moe_routers(model)] == [0, 1, 2]
    assert install(torch.nn.Linear(2, 2)) is None


def test_tap_keeps_the_scored_rows_and_writes_narrow_ids(tmp_path):
    model = FakeModel()
    tap = install(model)
    logits = torch.randn(5, E, generator=torch.Generator().manual_seed(0))
    tap.start_pass()
    model.route(logits)
    assert tap.take(torch.tensor([1, 3]), [0, 0], [11, 13]) is None
    tap.write(0, [11, 13], str(tmp_path / "r.npz"))
    with np.load(tmp_path / "r.npz") as f:
        ids, weights, layers = f["expert_ids"], f["weights"], f["layers"]
    assert ids.dtype == np.uint8 and ids.shape == (2, 2, K) and list(layers) == [0, 1]
    expected = torch.topk(logits[[1, 3]], K).indices.numpy()
    assert (ids[:, 0] == expected).all() and np.allclose(weights.sum(-1), 1.0)


def test_a_pass_where_a_layer_did_not_route_is_a_problem():
    model = FakeModel()
    tap = install(model)
    tap.start_pass()
    model.model.layers[0].mlp.experts.router.select_experts(None, torch.randn(2, E))
    assert "MoE layers [1] were not called" in tap.take(torch.tensor([0]), [0], [0])


def _routed(fault: str, magnitude: float, logits):
    """(weights, ids) of layer 0 as the routing tap records them, with the fault injected after the tap."""
    model = FakeModel()
    tap = install(model)
    moe_faults.FAULTS[fault](model, magnitude)
    tap.start_pass()
    model.route(logits)
    return tap.pass_weights[0], tap.pass_ids[0]


def test_faults_change_what_the_tap_records():
    logits = torch.tensor([[2.0, 1.9, 0.0, -1, -1, -1, -1, -1], [0.0, 0.1, 3.0, 1.0, -1, -1, -1, -1]])
    clean_w, clean_ids = _routed("expert_scale", 1.0, logits)

    w, ids = _routed("expert_scale", 1.5, logits)
    assert torch.equal(ids, clean_ids)
    assert torch.allclose(w[ids == 0], clean_w[clean_ids == 0] * 1.5) and torch.equal(w[ids != 0], clean_w[ids != 0])

    w, ids = _routed("routing_unnormalized", 0, logits)
    assert torch.equal(ids, clean_ids) and (w.sum(-1) < 0.99).all()

    w, ids = _routed("router_long", 1, logits)  # token 0 right, token 1 onwards shifted
    assert torch.equal(ids[0], clean_ids[0]) and torch.equal(ids[1], (clean_ids[1] + 1) % E)


def test_moe_faults_refuse_a_dense_model():
    with pytest.raises(RuntimeError, match="router_long fault: the model has no MoE router"):
        moe_faults.router_long(torch.nn.Linear(2, 2), 64)


def test_reference_tap_writes_router_logits_at_the_scored_positions(standin, tmp_path):
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest

    tokens = list(range(5, 25))
    with TransformersRunner(standin("tiny-Qwen3-30B-A3B")) as ref:
        ref.score([ScoreRequest(tokens, [3, 10, 19], tmp_path / "rows.npy", {"routing": tmp_path / "r.npz"})])
        with torch.no_grad():
            out = ref.model(input_ids=torch.tensor([tokens]), output_router_logits=True)
    with np.load(tmp_path / "r.npz") as f:
        logits, layers, top_k = f["router_logits"], f["layers"], int(f["top_k"])
    assert logits.shape == (3, 2, E) and list(layers) == [0, 1] and top_k == K
    for layer in range(2):
        assert np.allclose(logits[:, layer], out.router_logits[layer].reshape(-1, E)[[3, 10, 19]].numpy())


def test_lowprec_router_flips_only_choices_among_underflowed_probabilities():
    # token 0: 2nd and 3rd probability both under 0.03 (they underflow to a tie); token 1: a clear 2nd choice
    logits = torch.tensor([[6.0, 0.0, 0.5, -1, -1, -1, -1, -1], [2.0, 1.5, 0.0, -1, -1, -1, -1, -1]])
    clean_w, clean_ids = _routed("expert_scale", 1.0, logits)
    probs = torch.softmax(logits, -1)
    assert probs[0, 2] < 0.03 and probs[1, 1] > 0.03
    w, ids = _routed("router_lowprec", 0.03, logits)
    assert set(ids[0].tolist()) != set(clean_ids[0].tolist()) and 0 in ids[0].tolist()  # the 2nd choice flipped
    assert set(ids[1].tolist()) == set(clean_ids[1].tolist()) and torch.allclose(w[1], clean_w[1])
    chosen = probs[0, ids[0].long()]
    assert torch.allclose(w[0], chosen / chosen.sum())  # exact probabilities of the chosen, renormalised


def test_reference_moe_layers_follow_each_family_s_keys():
    from types import SimpleNamespace as NS

    from pytest_npuprec.runners.reference_taps.routing import moe_layers, top_k

    assert moe_layers(NS(num_hidden_layers=4, decoder_sparse_step=1, mlp_only_layers=[2])) == [0, 1, 3]
    assert moe_layers(NS(num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[])) == [1, 3]
    ernie = NS(num_hidden_layers=3, moe_layer_start_index=1, moe_layer_end_index=-1, moe_layer_interval=1, moe_k=2)
    assert moe_layers(ernie) == [1, 2] and top_k(ernie) == 2


@pytest.mark.parametrize("world, rank, factor", [(1, 0, 1.0), (2, 0, 1.0), (2, 1, 2.0)])
def test_tp_combine_scales_only_the_last_tensor_parallel_ranks_partial_sum(monkeypatch, world, rank, factor):
    """Wrong only under tensor parallel: with one rank nothing changes; with two, the last rank's weights (its
    partial sum of every chosen expert) x2 and rank 0's untouched."""
    import vllm.distributed as dist

    monkeypatch.setattr(dist, "get_tensor_model_parallel_world_size", lambda: world)
    monkeypatch.setattr(dist, "get_tensor_model_parallel_rank", lambda: rank)
    logits = torch.tensor([[2.0, 1.9, 0.0, -1, -1, -1, -1, -1]])
    model = FakeModel()
    said = moe_faults.tp_combine(model, 2.0)
    clean_w, clean_ids = FakeRouter()._compute_routing(None, logits)
    w, ids = model.route(logits)[0]
    assert torch.equal(ids, clean_ids) and torch.allclose(w, clean_w * factor)
    assert ("nothing changed in 2 MoE layers" in said) == (world == 1)
    assert world == 1 or "rank 1 of 2: its expert partial sum x2 in the combine in 2 MoE layers" in said
    with pytest.raises(RuntimeError, match="tp_combine fault: the model has no MoE router"):
        moe_faults.tp_combine(torch.nn.Linear(2, 2), 2.0)
