"""MoE routing: measure/routing.py (tie rule, expert load, NaN), its verdicts and where the checks exist."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput
from pytest_npuprec.capture.taps import model_taps, routed_experts
from pytest_npuprec.config.schema import ModelConfig, PrecisionConfig, ServeConfig, Threshold
from pytest_npuprec.errors import NpuprecError
from pytest_npuprec.measure.routing import bf16_ulp, compact_routes, compare_routes, measure_routing
from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.runners.worker_taps.routing import narrow_uint
from pytest_npuprec.verdicts import judge_thresholds

AGREE = Threshold("routing_agreement", "min", 0.99, "mean", "routing_agreement")
AGREE_MIN = Threshold("routing_agreement", "min", 0.99, "min", "routing_agreement-min")
LOAD = Threshold("expert_load", "max", 0.05, "max", "expert_load")

E, K = 8, 2


def router_logits(rng, n: int, layers: int = 2) -> np.ndarray:
    """[n x layers x E] logits whose 2nd and 3rd expert are >= 0.5 apart."""
    logits = rng.normal(0, 1, size=(n, layers, E))
    order = np.argsort(-logits, axis=-1)
    third = np.take_along_axis(logits, order[..., 2:3], -1)
    top2 = order[..., :2]
    np.put_along_axis(logits, top2, np.maximum(np.take_along_axis(logits, top2, -1), third + 0.5), -1)
    return logits


def top2(logits: np.ndarray) -> np.ndarray:
    return np.argsort(-logits, axis=-1, kind="stable")[..., :K]


def routing_capture(folder: Path, reference: list[np.ndarray], device_ids: list[np.ndarray]) -> ModelCapture:
    """One prompt per (reference router logits [P x L x E], device ids [P x L x k]); logits identical."""
    writer = CaptureWriter(folder)
    records = []
    for i, (ref, ids) in enumerate(zip(reference, device_ids)):
        n, layers = ref.shape[:2]
        prompt = PromptInput(index=i, id=f"p{i + 1}", label=f"prompt number {i + 1}", token_ids=(0, 1, 2))
        rows = np.eye(n, 16, dtype=np.float32) * 10
        tokens = tuple(int(t) for t in rows.argmax(1))
        for side in ("reference", "device"):
            np.save(writer.logits_path(side, i), rows)
        np.savez(writer.tap_path("reference", "routing", i), router_logits=ref.astype(np.float32),
                 layers=np.arange(layers, dtype=np.int32), top_k=np.int32(K))
        np.savez(writer.tap_path("device", "routing", i), expert_ids=ids.astype(np.uint8),
                 weights=np.full(ids.shape, 0.5, np.float32), layers=np.arange(layers, dtype=np.int32))
        records.append(PromptCapture(prompt, prompt.token_ids + tokens, tuple(range(2, 2 + n)),
                                     {"reference": tokens, "device": tokens}, {}))
    return writer.finish(ModelCapture("toy-moe", records, {"positions_mode": "continuation", "max_tokens": n}))


def judged(capture: ModelCapture, tie_margin: float | None = None, thresholds=(AGREE, AGREE_MIN, LOAD)):
    routing = measure_routing(capture, tie_margin)
    return routing, judge_thresholds(thresholds, measure(capture), routing)


def test_same_routing_passes_and_round_trips_through_the_capture(tmp_path):
    rng = np.random.default_rng(0)
    refs = [router_logits(rng, 6), router_logits(rng, 4)]
    capture = routing_capture(tmp_path / "c", refs, [top2(r) for r in refs])
    assert set(capture.prompts[0].tap_files["routing"]) == {"reference", "device"}
    routing, verdicts = judged(capture)
    assert routing.agreement() == 1.0 and routing.max_load_difference() == 0.0 and not routing.flips
    assert all(v.passed for v in verdicts.values()), [v.message for v in verdicts.values()]
    assert routing.n_routes == 20


def test_near_tie_swap_is_a_tie_inside_the_margin_and_a_flip_outside(tmp_path):
    ref = np.zeros((3, 2, E))
    ref[:, :, :4] = [3.0, 2.0, 1.0, 0.0]
    ref[1, 1, 2] = 1.98  # position 1, layer 1: 2nd (2.0) and 3rd (1.98) expert 0.02 apart
    dev = top2(ref).copy()
    dev[1, 1] = [0, 2]  # the device took the 3rd instead of the 2nd there
    capture = routing_capture(tmp_path / "c", [ref], [dev])

    routing, verdicts = judged(capture, tie_margin=0.03)
    assert routing.agreement() == 1.0 and routing.ties() == 1 and not routing.flips
    assert verdicts["routing_agreement"].passed

    routing, verdicts = judged(capture, tie_margin=0.01)
    assert routing.agreement() == pytest.approx(5 / 6) and len(routing.flips) == 1
    flip = routing.worst_flip()
    assert (flip.layer, flip.position, flip.reference, flip.device) == (1, 3, (0, 1), (0, 2))
    assert flip.margin == pytest.approx(0.02, rel=2 ** -10)  # float16, rounded up
    v = verdicts["routing_agreement"]
    assert not v.passed
    assert "layer 1, prompt p1" in v.message and "position 3" in v.message and "margin 0.02" in v.message
    assert v.worst["layer"] == 1 and v.worst["position"] == 3 and v.n_failing == 1
    assert not verdicts["routing_agreement-min"].passed  # layer 1 alone: 2/3


def test_default_tie_margin_is_one_bf16_ulp_of_the_kth_logit():
    ref = np.array([[[3.0, 2.0, 2.0 - 0.5 * float(bf16_ulp(np.array(2.0))), -1, -1, -1, -1, -1]]])
    agree, exact, margin, invalid = compare_routes(ref, np.array([[[0, 2]]]), K, None)
    assert agree.all() and not exact.any() and not invalid.any()
    agree, *_ = compare_routes(ref - np.array([[[0, 0, 0.1, 0, 0, 0, 0, 0]]]), np.array([[[0, 2]]]), K, None)
    assert not agree.any()


def test_a_far_expert_is_a_flip_even_with_a_wide_tie_margin(tmp_path):
    rng = np.random.default_rng(1)
    ref = router_logits(rng, 4)
    dev = top2(ref).copy()
    lowest = np.argsort(ref[2, 0])[0]
    dev[2, 0] = [dev[2, 0, 0], lowest]
    routing, verdicts = judged(routing_capture(tmp_path / "c", [ref], [dev]), tie_margin=0.4)
    assert len(routing.flips) == 1 and routing.flips[0].margin > 0.5
    assert not verdicts["routing_agreement"].passed


def test_expert_load_names_the_layer_and_expert_that_moved(tmp_path):
    rng = np.random.default_rng(2)
    ref = router_logits(rng, 40)
    dev = top2(ref).copy()
    dev[:, 1, 1] = np.where(dev[:, 1, 0] == 5, 4, 5)  # layer 1: expert 5 takes every second slot
    routing, verdicts = judged(routing_capture(tmp_path / "c", [ref], [dev]), tie_margin=0.0)
    v = verdicts["expert_load"]
    assert not v.passed and v.worst["layer"] == 1 and v.worst["expert"] == 5
    assert v.value == pytest.approx(routing.load_device[1, 5] - routing.load_reference[1, 5])
    assert "layer 1 expert 5" in v.message


def test_nan_router_logits_and_impossible_ids_fail(tmp_path):
    rng = np.random.default_rng(3)
    ref = router_logits(rng, 3)
    ref[1, 0, 4] = np.nan
    routing, verdicts = judged(routing_capture(tmp_path / "a", [ref], [top2(np.nan_to_num(ref))]))
    assert np.isnan(routing.agreement()) and routing.invalid
    assert all(not v.passed for v in verdicts.values() if v.check_id != "finite_logits")
    assert "NaN cannot pass" in verdicts["routing_agreement"].message

    ref = router_logits(rng, 3)
    dev = top2(ref).copy()
    dev[0, 1, 0] = 9  # no expert 9 of 8
    routing, verdicts = judged(routing_capture(tmp_path / "b", [ref], [dev]))
    assert not verdicts["routing_agreement"].passed and "outside 0..7" in routing.invalid[0]


def test_no_routing_capture_is_a_failure_not_a_pass(make_capture, confident_logits):
    verdicts = judge_thresholds((AGREE,), measure(make_capture(confident_logits, confident_logits)), None)
    assert not verdicts["routing_agreement"].passed and "no routing was captured" in verdicts["routing_agreement"].message


def test_expert_ids_stored_in_the_narrowest_type():
    assert narrow_uint(8) == np.uint8 and narrow_uint(256) == np.uint8 and narrow_uint(257) == np.uint16
    assert narrow_uint(70000) == np.uint32


def _config(tmp_path: Path, thresholds) -> ModelConfig:
    return ModelConfig(name="m", path=tmp_path / "m.yaml", model_name="org/m", serve=ServeConfig(),
                       precision=PrecisionConfig(prompts=(), max_tokens=4, thresholds=thresholds))


def test_routing_checks_need_a_moe_checkpoint(tmp_path):
    dense, moe = tmp_path / "dense", tmp_path / "moe"
    dense.mkdir(), moe.mkdir()
    (dense / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (moe / "config.json").write_text(json.dumps({"text_config": {"num_experts": 8}}))
    assert routed_experts(dense) == 0 and routed_experts(moe) == 8
    assert model_taps(_config(tmp_path, (AGREE,)), moe) == ("routing",)
    assert model_taps(_config(tmp_path, ()), moe) == ()  # no routing bound: no routing check, nothing captured
    with pytest.raises(NpuprecError, match=r"m.yaml: precision.thresholds bounds routing_agreement.*no routed"):
        model_taps(_config(tmp_path, (AGREE,)), dense)


def test_routing_bounds_in_yaml(tmp_path):
    from pytest_npuprec.config.loader import ConfigError, load_config

    base = ("model_name: org/m\nserve: {dtype: bfloat16, max_model_len: 512}\nprecision:\n  max_tokens: 4\n"
            "  prompts: [hi]\n  routing_tie_margin: 0.05\n  thresholds:\n    cosine_similarity: {min: 0.99}\n")
    path = tmp_path / "m.yaml"
    path.write_text(base + "    routing_agreement: {min: 0.98}\n    expert_load: {max: 0.02, reduce: max}\n")
    config = load_config(path)
    assert config.precision.routing_tie_margin == 0.05
    assert {"routing_agreement", "expert_load"} <= set(config.check_ids)
    assert not any(t.metric in ("routing_agreement", "expert_load") for t in config.decode_thresholds)
    path.write_text(base + "    routing_agreement: {min: 0.98, phase: decode}\n")
    with pytest.raises(ConfigError, match="routing_agreement.*routing of the teacher-forced scoring pass"):
        load_config(path)
    path.write_text(base + "    expert_load: {min: 0.5}\n")
    with pytest.raises(ConfigError, match="expected a `max` bound"):
        load_config(path)


def test_expert_parallel_on_vllm_cpu_is_refused_before_an_engine_starts():
    from pytest_npuprec.runners.device import VllmRunner
    from pytest_npuprec.runners.layouts import UnsupportedLayout

    serve = ServeConfig(tensor_parallel_size=2, enable_expert_parallel=True)
    with pytest.raises(UnsupportedLayout, match=r"m: layout enable_expert_parallel=true, tensor_parallel_size=2 "
                                                r"is refused on platform cpu.*cpu_fused_moe"):
        VllmRunner(Path("nowhere"), serve, "cpu", model="m").__enter__()


def _exact_rule(ref: np.ndarray, ids: np.ndarray, tie_margin: float | None):
    """The tie rule on the FP32 logits themselves, in float64 (what the compact form must decide alike)."""
    ref = ref.astype(np.float32).astype(np.float64)
    order = np.argsort(-ref, axis=-1, kind="stable")
    kth = np.take_along_axis(ref, order[..., K - 1:K], -1)[..., 0]
    chosen = np.zeros(ref.shape, bool)
    np.put_along_axis(chosen, order[..., :K], True, -1)
    dev = np.zeros(ref.shape, bool)
    np.put_along_axis(dev, ids, True, -1)
    exact = (chosen == dev).all(-1)
    only = dev & ~chosen
    margin = np.where(exact, 0.0, kth - np.where(only, ref, np.inf).min(-1))
    floor = bf16_ulp(kth) if tie_margin is None else tie_margin
    return exact | (margin <= floor), exact, margin


@pytest.mark.parametrize("tie_margin", [None, 0.0, 0.04])
def test_compact_reference_decides_every_tie_as_the_fp32_logits_do(tie_margin):
    """Gaps kept in float16 rounded away from the tie floor: the same ties and flips as on the FP32 logits, for any
    device choice, including gaps one float32 step either side of the floor; margins within float16's precision
    (a flip's never below the true one)."""
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 1, size=(4000, 2, E)).astype(np.float32)
    order = np.argsort(-ref, axis=-1, kind="stable")
    kth = np.take_along_axis(ref, order[..., K - 1:K], -1)
    floor = bf16_ulp(kth.astype(np.float64)) if tie_margin is None else np.full(kth.shape, tie_margin)
    nxt = order[..., K:K + 1]
    edge = (kth - floor).astype(np.float32)  # the (k+1)-th expert at the floor, or one float32 step either side
    step = rng.integers(-1, 2, size=kth.shape)
    edge = np.where(step < 0, np.nextafter(edge, np.float32(np.inf)), np.where(step > 0, np.nextafter(edge, np.float32(-np.inf)), edge))
    near = rng.random(kth.shape) < 0.5
    np.put_along_axis(ref, nxt, np.where(near, np.minimum(edge, kth), np.take_along_axis(ref, nxt, -1)), -1)
    ids = np.stack([rng.permutation(E)[:K] for _ in range(ref.shape[0] * 2)]).reshape(ref.shape[0], 2, K)
    swap = rng.random(kth.shape[:2]) < 0.5  # half the routes: the reference's top-k with its k-th swapped for the next
    swapped = np.concatenate([order[..., :K - 1], order[..., K:K + 1]], -1)
    ids = np.where(swap[..., None], swapped, ids)
    agree, exact, margin, invalid = compare_routes(ref, ids, K, tie_margin)
    want_agree, want_exact, want_margin = _exact_rule(ref, ids, tie_margin)
    assert not invalid.any()
    np.testing.assert_array_equal(agree, want_agree)
    np.testing.assert_array_equal(exact, want_exact)
    assert np.where(want_agree, margin <= want_margin, margin >= want_margin).all()  # rounded away from the floor
    np.testing.assert_allclose(margin, want_margin, rtol=2 ** -10, atol=2 ** -24)
    assert 0 < (agree & ~exact).sum() and (~agree).sum() > 0  # both ties and flips were decided


def test_compact_reference_is_small_and_narrow():
    rng = np.random.default_rng(8)
    compact = compact_routes(router_logits(rng, 5), K, None)
    assert compact["top_ids"].dtype == np.uint8 and compact["kth"].dtype == np.float32
    assert compact["gaps"].dtype == np.float16
    assert compact_routes(rng.normal(size=(1, 1, 300)), 8, None)["top_ids"].dtype == np.uint16
    nan = router_logits(rng, 2)
    nan[1, 0, 3] = np.inf
    assert np.isnan(compact_routes(nan, K, None)["kth"][1, 0]) and np.isfinite(compact_routes(nan, K, None)["kth"][0]).all()
