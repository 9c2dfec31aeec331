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
