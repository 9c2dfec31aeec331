"""--npuprec-calibrate without an engine: bounds from a floor (rounded outwards), the refusal, the YAML rewrite
(comments, key order, quoting kept), the default precision section, the replayed reference and the options."""
from __future__ import annotations

import math
import random
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import yaml

from pytest_npuprec.calibrate.bounds import (DEFAULT_LAYOUT, badness, calibrate, calibrated_bound, refusals,
                                             round_up, yaml_float)
from pytest_npuprec.calibrate.defaults import CHAT_PROMPT, default_precision
from pytest_npuprec.calibrate.floor import RecordedReference
from pytest_npuprec.calibrate.yaml_doc import CALIBRATED_MARK, ConfigDocument, DocumentError
from pytest_npuprec.config.loader import load_config
from pytest_npuprec.metrics.registry import METRICS
from pytest_npuprec.runners.scoring import ScoreRequest

CONFIGS = Path(__file__).resolve().parents[1] / "e2e" / "models" / "configs"


def _floor(similar: float = 0.99998, distance: float = 2e-5) -> dict:
    out = {}
    for metric, spec in METRICS.items():
        value = similar if spec.better == "higher" else distance
        worse = 1 - 4 * (1 - value) if spec.better == "higher" else 4 * value
        out[metric] = {"mean": value, "min": worse if spec.better == "higher" else value,
                       "max": value if spec.better == "higher" else worse}
    return out


# --- bounds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [("0.000042", "0.000042"), ("0.0000421", "0.000043"),
                                             ("8.1e-6", "0.0000081"), ("0.258", "0.26"), ("0.25", "0.25"),
                                             ("0", "0"), ("123.4", "130")])
def test_round_up_keeps_two_significant_digits_and_never_rounds_down(value, expected):
    assert round_up(Decimal(value)) == Decimal(expected)


def test_calibrated_bounds_are_never_tighter_than_floor_times_factor():
    rng = random.Random(7)
    for _ in range(2000):
        metric = rng.choice(list(METRICS))
        spec = METRICS[metric]
        floor = 10 ** rng.uniform(-9, -0.5)
        floor = 1 - floor if spec.better == "higher" else floor
        factor = rng.choice([1.0, 2.5, 3.0, 10.0])
        bound = calibrated_bound(metric, "mean", floor, factor)
        assert isinstance(yaml.safe_load(f"x: {bound.text}")["x"], float), bound.text  # PyYAML reads a float
        assert bound.kind == ("min" if spec.better == "higher" else "max")
        if bound.value == spec.lowest:  # clamped: a similarity bound cannot go below the metric's range
            continue
        # written badness >= factor x floor badness (up to the float the YAML text reads back as)
        assert badness(metric, bound.value) >= factor * badness(metric, floor) * (1 - 1e-12), (metric, floor, bound)
        assert badness(metric, bound.value) <= factor * badness(metric, floor) * 1.11 + 1e-15  # 2 digits: <= 10% out


@pytest.mark.parametrize("metric, floor, text", [
    ("cosine_similarity", 0.999986, "0.999958"), ("kl_divergence", 2.7e-6, "8.1e-6"), ("max_abs_diff", 0.086, "0.26"),
    ("token_agreement", 1.0, "1.0"), ("relative_l2", 0.0, "0.0"), ("kl_divergence", 4e-5, "0.00012"),
])
def test_bound_texts(metric, floor, text):
    assert calibrated_bound(metric, "mean", floor, 3).text == text


def test_yaml_float_always_has_a_dot():
    for value in ("1e-5", "0.5", "2", "1.25e-7", "0.0001", "0.00009"):
        text = yaml_float(Decimal(value))
        assert "." in text and float(text) == float(value), text
        assert isinstance(yaml.safe_load(text), float)


def test_no_refusal_inside_the_floor_times_factor():
    floor = _floor()
    device = {m: {r: (1 - 2.9 * (1 - v) if METRICS[m].better == "higher" else 2.9 * v) for r, v in s.items()}
              for m, s in floor.items()}
    assert refusals(DEFAULT_LAYOUT, floor, device, 3) == []


def test_refusal_names_each_metric_outside_the_floor_times_factor():
    floor = _floor()
    device = {m: dict(s) for m, s in floor.items()}
    device["kl_divergence"]["mean"] = 3.1 * floor["kl_divergence"]["mean"]
    device["cosine_similarity"]["min"] = 1 - 10 * (1 - floor["cosine_similarity"]["min"])
    lines = refusals(DEFAULT_LAYOUT, floor, device, 3)
    assert len(lines) == 2
    assert lines[0].startswith("cosine_similarity min: device") and "10 x the floor, more than 3 x" in lines[0]
    assert lines[1].startswith("kl_divergence mean: device") and "3.1 x the floor" in lines[1]
    assert refusals(DEFAULT_LAYOUT, floor, device, 11) == []  # a larger factor accepts it


def test_refusal_of_nan_and_of_any_error_over_a_zero_floor():
    floor = _floor()
    floor["max_abs_diff"]["max"] = 0.0
    device = {m: dict(s) for m, s in floor.items()}
    device["max_abs_diff"]["max"] = 1e-9
    device["relative_l2"]["mean"] = math.nan
    lines = refusals(DEFAULT_LAYOUT, floor, device, 3)
    assert any(line.startswith("relative_l2 mean") and "not a finite number" in line for line in lines)
    assert any(line.startswith("max_abs_diff max") and "the floor is 0" in line for line in lines)


# --- the YAML rewrite -----------------------------------------------------------------------------------------


def _strip_thresholds(text: str) -> str:
    return re.sub(r"^  thresholds:\n(?:    .*\n)+", "", text, flags=re.M)


def _is_subsequence(lines, within):
    it = iter(within)
    return all(line in it for line in lines)


@pytest.fixture
def tiny_llama_copy(tmp_path):
    path = tmp_path / "tiny-llama.yaml"
    path.write_text(_strip_thresholds((CONFIGS / "tiny-llama.yaml").read_text()))
    return path


def test_thresholds_written_and_every_other_line_kept(tiny_llama_copy):
    before = tiny_llama_copy.read_text()
    bounds = calibrate(DEFAULT_LAYOUT, _floor(), 3)
    doc = ConfigDocument(tiny_llama_copy)
    doc.set_thresholds(bounds, [f"{CALIBRATED_MARK} on a test", "floor: made up"])
    doc.write()
    after = tiny_llama_copy.read_text()
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert _is_subsequence(before.splitlines(), after.splitlines())
    assert added[:3] == [f"  # {CALIBRATED_MARK} on a test", "  # floor: made up", "  thresholds:"]
    assert '    - "The capital of France is"' in after  # quoting kept
    assert "# Thresholds are calibrated, not copied" in after and "# drift against the device record" in after
    # the block sits where it was: after the prompts, before the drift comment
    assert after.index("content: \"What is the capital of France?\"") < after.index("  thresholds:") \
        < after.index("# drift against")
    model = load_config(tiny_llama_copy)
    written = {(t.metric, t.reduce): t.value for t in model.thresholds}
    assert list(written) == list(DEFAULT_LAYOUT)
    assert written == {(b.metric, b.reduce): b.value for b in bounds}


def test_recalibration_replaces_its_own_block_and_comment_only(tmp_path):
    path = tmp_path / "tiny-llama.yaml"
    original = (CONFIGS / "tiny-llama.yaml").read_text()
    path.write_text(original)
    # max_abs_diff too: tiny-llama's prefix_cache check takes its warm-vs-cold bound from it
    layout = (("kl_divergence", "mean"), ("cosine_similarity", "min"), ("max_abs_diff", "max"))
    for round_ in (1, 2):
        doc = ConfigDocument(path)
        doc.set_thresholds(calibrate(layout, _floor(distance=round_ * 1e-5), 3), [f"{CALIBRATED_MARK} round {round_}"])
        doc.write()
    text = path.read_text()
    assert f"{CALIBRATED_MARK} round 2" in text and "round 1" not in text
    assert text.count("\n  thresholds:") == 1 and "token_agreement: {min: 0.99}" not in text
    kept = [line for line in original.splitlines()
            if not line.startswith("    ") or "content:" in line or "role:" in line or "kl_divergence: 50%" in line]
    assert _is_subsequence([line for line in kept if "thresholds:" not in line], text.splitlines())
    expected = {b.metric: b.value for b in calibrate(layout, _floor(distance=2e-5), 3)}
    assert {t.id: t.value for t in load_config(path).thresholds} == expected


def test_decode_bounds_are_carried_over(tmp_path):
    from pytest_npuprec.calibrate.session import decode_bounds_as_written

    path = tmp_path / "m.yaml"
    path.write_text('model_name: "org/M"\nprecision:\n  max_tokens: 4\n  prompts: ["hi"]\n  thresholds:\n'
                    "    kl_divergence: [{max: 1.0e-5}, {max: 3.0e-5, phase: decode}]\n  decode: true\n")
    doc = ConfigDocument(path)
    doc.set_thresholds(calibrate((("kl_divergence", "mean"),), _floor(), 3), [CALIBRATED_MARK],
                       keep=decode_bounds_as_written(doc.text))
    doc.write()
    model = load_config(path)
    assert [(t.id, t.value) for t in model.thresholds] == [("kl_divergence", 6e-5)]
    assert [(t.id, t.value) for t in model.decode_thresholds] == [("kl_divergence-decode", 3e-5)]
    assert path.read_text().endswith("  decode: true\n")


def test_a_vllm_ascend_config_gets_a_precision_section(tmp_path):
    theirs = (CONFIGS / "Qwen3Guard-Gen-4B.yaml").read_text().split("precision:")[0]
    path = tmp_path / "Qwen3Guard-Gen-4B.yaml"
    path.write_text(theirs)
    assert load_config(path).precision is None
    doc = ConfigDocument(path)
    assert not doc.has_precision()

    class ChatTokenizer:
        chat_template = "{{ messages }}"

    doc.add_precision(default_precision(ChatTokenizer()), ["precision: added"])
    doc.set_thresholds(calibrate(DEFAULT_LAYOUT, _floor(), 3), [CALIBRATED_MARK])
    doc.write()
    text = path.read_text()
    assert text.startswith(theirs) and doc.has_precision()
    model = load_config(path)
    assert model.precision.prompts[-1].id == CHAT_PROMPT["id"] and model.precision.prompts[-1].messages
    assert len(model.thresholds) == len(DEFAULT_LAYOUT) and model.serve.trust_remote_code is True


def test_default_prompts_have_a_chat_prompt_only_with_a_chat_template():
    class Plain:
        chat_template = None

    class Chat:
        chat_template = "{{ messages }}"

    assert CHAT_PROMPT not in default_precision(Plain())["prompts"]
    assert default_precision(Chat())["prompts"][-1] == CHAT_PROMPT


def test_a_flow_style_precision_section_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text('model_name: "org/M"\nprecision: {max_tokens: 4, prompts: ["hi"]}\n')
    with pytest.raises(DocumentError, match="not a block mapping"):
        ConfigDocument(path).set_thresholds(calibrate(DEFAULT_LAYOUT, _floor(), 3), [CALIBRATED_MARK])


def test_thresholds_optional_only_when_asked(tiny_llama_copy):
    from pytest_npuprec.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"precision.thresholds: missing.*\(--npuprec-calibrate measures the noise floor"):
        load_config(tiny_llama_copy)
    assert load_config(tiny_llama_copy, require_thresholds=False).thresholds == ()


# --- the floor's replayed reference ---------------------------------------------------------------------------


def test_recorded_reference_replays_generation_and_logits(tmp_path, make_capture):
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(4, 16)).astype(np.float32) for _ in range(2)]
    capture = make_capture(ref[1:], [ref[1] + 0.01], prompt_len=3)
    other = make_capture(ref[:1], ref[:1], prompt_len=2)  # another prompt (token ids) of the same model
    capture.prompts.append(other.prompts[0])
    with RecordedReference(capture) as runner:
        assert runner.generate([other.prompts[0].prompt.token_ids, capture.prompts[0].prompt.token_ids], 4) == \
            [other.prompts[0].generated["reference"], capture.prompts[0].generated["reference"]]
        out = tmp_path / "out.npy"
        p = capture.prompts[0]
        runner.score([ScoreRequest(p.scored, p.positions, out)])
    assert np.array_equal(np.load(out), ref[1])


# --- collection (the options' usage errors: test_plugin_options.py) ---------------------------------------------


def test_calibrate_collects_one_item_per_model_even_without_thresholds(pytester):
    configs = pytester.mkdir("configs")
    (configs / "theirs.yaml").write_text('model_name: "org/Theirs-1B"\nserve: {dtype: bfloat16}\n')
    (configs / "ours.yaml").write_text('model_name: "org/Ours"\nprecision:\n  max_tokens: 4\n  prompts: ["hi"]\n')
    result = pytester.runpytest("--collect-only", "-q", "--npuprec-config-dir", "configs", "--npuprec-model",
                                "theirs,ours", "--npuprec-calibrate")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines_random(["configs/theirs.yaml::test_precision[[]theirs-calibrate[]]",
                                 "configs/ours.yaml::test_precision[[]ours-calibrate[]]"])


def test_a_model_without_weights_is_red_and_its_file_untouched(pytester, tmp_path):
    configs = pytester.mkdir("configs")
    theirs = 'model_name: "org/Missing-1B"\nserve: {dtype: bfloat16}   # theirs, as it is\n'
    (configs / "Missing-1B.yaml").write_text(theirs)
    result = pytester.runpytest("--npuprec-config-dir", "configs", "--npuprec-model", "Missing-1B", "--npuprec-calibrate",
                                "--npuprec-model-root", str(tmp_path / "nowhere"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Missing-1B: not calibrated: model Missing-1B (org/Missing-1B): no checkpoint*",
                                 "*Missing-1B: calibration, factor 3*", "*Missing-1B: not calibrated: *",
                                 "FAILED *test_precision[[]Missing-1B-calibrate[]]*"])
    assert (configs / "Missing-1B.yaml").read_text() == theirs


def test_perplexity_max_ratio_from_the_floor_and_its_refusal():
    from pytest_npuprec.calibrate.bounds import calibrated_max_ratio, ratio_refusal

    for floor in (1.001, 0.999, 1.0, 1.2):
        bound = float(calibrated_max_ratio(floor, 3))
        assert bound >= math.exp(3 * abs(math.log(floor))) - 1e-15 and isinstance(yaml.safe_load(str(bound)), float)
    assert ratio_refusal(1.001, 0.9978, 3) is None  # 2.2 x the floor (on |ln ratio|)
    assert "perplexity ratio: device 1.11, floor 1.001" in ratio_refusal(1.001, 1.11, 3)
    assert "not a finite number" in ratio_refusal(1.001, math.nan, 3)


def test_max_ratio_replaced_in_place(tmp_path):
    path = tmp_path / "tiny-BitCPM4-CANN-1B.yaml"
    original = (CONFIGS / "tiny-BitCPM4-CANN-1B.yaml").read_text()
    path.write_text(original)
    doc = ConfigDocument(path)
    doc.set_scalar(("precision", "checks", "perplexity", "max_ratio"), "1.0031")
    doc.write()
    changed = [(a, b) for a, b in zip(original.splitlines(), path.read_text().splitlines()) if a != b]
    assert changed == [("      max_ratio: 1.005", "      max_ratio: 1.0031")]
    assert load_config(path).checks.perplexity.max_ratio == 1.0031
    with pytest.raises(DocumentError, match="precision.checks.perplexity.text: expected a plain number"):
        doc.set_scalar(("precision", "checks", "perplexity", "text"), "1.0")


def test_no_bound_from_a_non_finite_floor():
    from pytest_npuprec.calibrate.bounds import FloorError, calibrated_max_ratio

    with pytest.raises(FloorError, match="kl_divergence max: the BF16 floor measured nan"):
        calibrated_bound("kl_divergence", "max", math.nan, 3)
    with pytest.raises(FloorError, match="perplexity ratio: the BF16 floor measured inf"):
        calibrated_max_ratio(math.inf, 3)


# --- every metric the model has: tap metrics (routing), their resolution, the tie margin --------------------------


def test_every_registered_metric_is_calibrated_from_the_logits_or_a_tap(make_capture, confident_logits):
    """A metric added to the registry is calibrated as soon as it is measured: from the logits (measure()), or by
    the entry of the tap that captures it (calibrate/taps.py TAP_METRICS, e.g. a vision tower's metrics)."""
    from pytest_npuprec.calibrate.taps import TAP_METRICS
    from pytest_npuprec.measure.thresholds import measure

    from_logits = set(measure(make_capture(confident_logits, confident_logits)).cells)
    from_taps = {m for spec in TAP_METRICS.values() for m in spec.metrics}
    assert not from_logits & from_taps
    missing = set(METRICS) - from_logits - from_taps
    assert not missing, f"registered metrics no calibration measures: {sorted(missing)} (add a TAP_METRICS entry)"
    for tap, spec in TAP_METRICS.items():
        assert {m for m, _ in spec.layout} <= set(spec.metrics), tap


def _routing_capture(tmp_path, flips: int, n: int = 64):
    """One prompt, n positions x 2 layers, 8 experts top-2 with wide margins; `flips` routes of layer 0 swapped for
    the lowest expert (never a tie)."""
    from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput

    rng = np.random.default_rng(5)
    ref = rng.normal(0, 1, size=(n, 2, 8))
    order = np.argsort(-ref, axis=-1, kind="stable")
    np.put_along_axis(ref, order[..., :2], np.take_along_axis(ref, order[..., 2:3], -1) + 1.0, -1)
    order = np.argsort(-ref, axis=-1, kind="stable")
    ids = order[..., :2].copy()
    ids[:flips, 0, 1] = order[:flips, 0, -1]
    writer = CaptureWriter(tmp_path)
    prompt = PromptInput(index=0, id="p1", label="p1", token_ids=(0, 1))
    rows = np.eye(n, 16, dtype=np.float32) * 10
    for side in ("reference", "device"):
        np.save(writer.logits_path(side, 0), rows)
    np.savez(writer.tap_path("reference", "routing", 0), router_logits=ref.astype(np.float32),
             layers=np.arange(2, dtype=np.int32), top_k=np.int32(2))
    np.savez(writer.tap_path("device", "routing", 0), expert_ids=ids.astype(np.uint8), layers=np.arange(2, dtype=np.int32))
    tokens = tuple(int(t) for t in rows.argmax(1))
    record = PromptCapture(prompt, prompt.token_ids + tokens, tuple(range(1, 1 + n)),
                           {"reference": tokens, "device": tokens}, {})
    return writer.finish(ModelCapture("toy-moe", [record], {"positions_mode": "continuation", "max_tokens": n}))


def test_routing_figures_and_a_zero_floor_bound_that_allows_one_route(tmp_path):
    """A floor of 256/256 routes says only that fewer than 1 in 256 differ: the bound allows one route (never 1.0,
    which the next BF16 near-miss would fail); a device 1 route off is inside it, 3 routes off is refused."""
    from pytest_npuprec.calibrate.taps import TAP_METRICS

    spec = TAP_METRICS["routing"]
    clean = spec.figures(_routing_capture(tmp_path / "a", 0, n=128), None)
    assert clean.summary["routing_agreement"] == {"mean": 1.0, "min": 1.0, "max": 1.0}
    assert clean.summary["expert_load"]["max"] == 0.0
    assert clean.resolution[("routing_agreement", "mean")] == 1 / 256
    assert clean.resolution[("routing_agreement", "min")] == 1 / 128
    assert clean.resolution[("expert_load", "max")] == 1 / 256
    layout = spec.layout
    bounds = {b.metric: b for b in calibrate(layout, clean.summary, 3.0, clean.resolution)}
    assert bounds["routing_agreement"].text == "0.996" and bounds["routing_agreement"].kind == "min"
    assert bounds["expert_load"].text == "0.004"
    one = spec.figures(_routing_capture(tmp_path / "b", 1, n=128), None)
    assert one.summary["routing_agreement"]["mean"] == 255 / 256
    assert not refusals(layout, clean.summary, one.summary, 3.0, clean.resolution)
    assert 255 / 256 >= bounds["routing_agreement"].value
    three = spec.figures(_routing_capture(tmp_path / "c", 3, n=128), None)
    refused = refusals(layout, clean.summary, three.summary, 3.0, clean.resolution)
    assert any(line.startswith("routing_agreement mean: device 0.988") for line in refused), refused
    assert 253 / 256 < bounds["routing_agreement"].value  # the routing-only fault's level (3 of 256) fails it


def test_routing_tie_margin_from_the_floor_is_twice_its_router_logit_error(tmp_path, monkeypatch):
    from pytest_npuprec.calibrate import taps

    monkeypatch.setattr("pytest_npuprec.measure.routing.router_logit_error", lambda capture: 0.0193)
    assert taps.TAP_METRICS["routing"].tie_margin(None) == ("0.039", "2 x the floor's largest router logit |diff| 0.0193")
    from pytest_npuprec.calibrate.session import tie_margins

    assert tie_margins(None, ("routing",)) == {"routing_tie_margin": ("0.039", "2 x the floor's largest router logit "
                                                                               "|diff| 0.0193")}
    assert tie_margins(None, ()) == {}
    monkeypatch.setattr("pytest_npuprec.measure.routing.router_logit_error", lambda capture: None)
    assert taps.TAP_METRICS["routing"].tie_margin(None) is None


def test_layout_adds_the_taps_metrics_the_config_does_not_bound(tmp_path):
    from pytest_npuprec.calibrate.session import layout_of

    moe = CONFIGS / "tiny-Qwen3-30B-A3B.yaml"
    text = _strip_thresholds(moe.read_text())
    (tmp_path / "m.yaml").write_text(text)
    bare = load_config(tmp_path / "m.yaml", require_thresholds=False)
    assert layout_of(bare, ("routing",)) == DEFAULT_LAYOUT + (("routing_agreement", "mean"), ("expert_load", "max"))
    have = load_config(moe)
    layout = layout_of(have, ("routing",))
    assert ("routing_agreement", "mean") in layout and ("expert_load", "max") in layout
    assert len(layout) == len({(t.metric, t.reduce) for t in have.thresholds})  # bounded already: nothing added


def test_routing_tie_margin_written_beside_the_thresholds_then_in_place(tmp_path):
    moe = CONFIGS / "tiny-Qwen3-30B-A3B.yaml"
    original = moe.read_text()
    text = _strip_thresholds(original).replace("  routing_tie_margin: 0.04\n", "")
    path = tmp_path / "tiny-Qwen3-30B-A3B.yaml"
    path.write_text(text)
    floor = _floor()
    layout = DEFAULT_LAYOUT + (("routing_agreement", "mean"), ("expert_load", "max"))
    doc = ConfigDocument(path)
    doc.set_thresholds(calibrate(layout, floor, 3.0), [f"{CALIBRATED_MARK} first"], scalars={"routing_tie_margin": "0.039"})
    doc.write()
    config = load_config(path)
    assert config.precision.routing_tie_margin == 0.039
    assert {"routing_agreement", "expert_load"} <= {t.metric for t in config.thresholds}
    assert _is_subsequence(text.splitlines(), path.read_text().splitlines())
    doc = ConfigDocument(path)
    assert "routing_tie_margin" in doc.precision_keys()
    doc.set_scalar(("precision", "routing_tie_margin"), "0.05")
    doc.set_thresholds(calibrate(layout, floor, 3.0), [f"{CALIBRATED_MARK} second"])
    again = doc.text
    assert again.count("\n  routing_tie_margin:") == 1 and again.count(CALIBRATED_MARK) == 1 and "second" in again
    assert yaml.safe_load(again)["precision"]["routing_tie_margin"] == 0.05


# --- drift tolerances from the spread of repeated device runs -------------------------------------------------------


def test_drift_tolerance_is_the_spread_times_the_factor_rounded_up():
    from pytest_npuprec.calibrate.drift import propose, spread

    assert spread("kl_divergence", [1e-5, 1.2e-5, 1.1e-5]) == pytest.approx(0.2)
    assert spread("cosine_similarity", [0.99999, 0.99998]) == pytest.approx(1.0)  # badness 1e-5 -> 2e-5
    assert spread("kl_divergence", [1e-9, 3e-9]) == 0.0  # both under the drift floor (1e-8): no spread
    p = propose({"kl_divergence": [1e-5, 1.2e-5, 1.1e-5], "relative_l2": [0.004, 0.004, 0.004]}, 3.0)
    assert p.tolerances == {"kl_divergence": "60%"}
    assert any("relative_l2: not proposed: the 3 device runs gave the same mean" in n for n in p.notes), p.notes
    comment = "\n".join(p.comment(3.0))
    assert "kl_divergence: means 1e-05, 1.2e-05, 1.1e-05; spread 0.2 -> 60%" in comment
    assert "relative_l2" in comment and "none (spread 0)" in comment
    assert propose({"kl_divergence": [1e-5, 1.0001e-5]}, 3.0).tolerances == {"kl_divergence": "0.03%"}


def test_no_drift_tolerance_from_one_run_or_a_nan():
    from pytest_npuprec.calibrate.drift import propose

    one = propose({"kl_divergence": [1e-5]}, 3.0)
    assert not one.tolerances and "one device run (--npuprec-calibrate-runs N" in one.notes[0]
    nan = propose({"kl_divergence": [1e-5, math.nan]}, 3.0)
    assert not nan.tolerances and "not a finite number" in nan.notes[0]


def test_drift_block_written_loaded_and_every_other_line_kept(tmp_path):
    from pytest_npuprec.calibrate.session import merged_drift
    from pytest_npuprec.calibrate.yaml_doc import DRIFT_MARK

    llama = (CONFIGS / "tiny-llama.yaml").read_text()
    assert "  drift:" in llama  # tiny-llama keeps a drift block: its other metrics survive a proposal
    path = tmp_path / "tiny-llama.yaml"
    path.write_text(llama)
    doc = ConfigDocument(path)
    merged = merged_drift(doc.text, {"kl_divergence": "60%"})
    doc.set_drift(merged, [f"{DRIFT_MARK} first", "  kl_divergence: spread 0.2"])
    doc.write()
    written = path.read_text()
    kept = [line for line in llama.splitlines() if not re.match(r"\s+kl_divergence: \S+%?$", line)]
    assert _is_subsequence(kept, written.splitlines())
    drift = {d.metric: d.tolerance for d in load_config(path).precision.drift}
    assert drift["kl_divergence"] == 0.6 and len(drift) == len(merged)
    doc = ConfigDocument(path)
    doc.set_drift(merged_drift(doc.text, {"kl_divergence": "45%"}), [f"{DRIFT_MARK} second"])
    assert doc.text.count(DRIFT_MARK) == 1 and "second" in doc.text
    bare = tmp_path / "bare.yaml"  # no drift block: placed after the thresholds
    bare.write_text(re.sub(r"\n  drift:\n(    .*\n|  #.*\n)*", "\n", llama))
    assert "drift:" not in yaml.safe_load(bare.read_text())["precision"]
    doc = ConfigDocument(bare)
    doc.set_drift({"relative_l2": "25%"}, [f"{DRIFT_MARK} new"])
    doc.write()
    assert [d.metric for d in load_config(bare).precision.drift] == ["relative_l2"]
