"""The vision side: measure/vision.py (per-image embeddings, deepstack, NaN, M-RoPE positions exactly), its
verdicts (vision vs language), the report table and where the checks exist."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.capture.records import CaptureWriter, ModelCapture, PromptCapture, PromptInput
from pytest_npuprec.capture.taps import model_taps
from pytest_npuprec.config.schema import ModelConfig, PrecisionConfig, ServeConfig, Threshold
from pytest_npuprec.errors import NpuprecError
from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.measure.vision import compare_parts, measure_vision
from pytest_npuprec.report.vision import add_vision, vision_rows
from pytest_npuprec.verdicts import judge_thresholds

COSINE = Threshold("vision_cosine", "min", 0.9999, "min", "vision_cosine")
REL = Threshold("vision_relative_l2", "max", 0.01, "max", "vision_relative_l2")
MAXDIFF = Threshold("vision_max_abs_diff", "max", 0.5, "max", "vision_max_abs_diff")
MROPE = Threshold("mrope_mismatches", "max", 0, "max", "mrope_mismatches")
KL = Threshold("kl_divergence", "max", 1e-3, "max", "kl_divergence")
VISION = (COSINE, REL, MAXDIFF, MROPE)


def tower(rng, tokens: int, hidden: int = 16, levels: int = 1) -> dict[str, np.ndarray]:
    return {"embeds": rng.normal(0, 1, (tokens, hidden)).astype(np.float32),
            "deepstack": rng.normal(0, 1, (levels, tokens, hidden)).astype(np.float32)}


def positions(n: int, image_at: int = 3, side: int = 2) -> np.ndarray:
    """[3 x n] M-RoPE positions: text on the diagonal, one side x side image at image_at."""
    out = np.tile(np.arange(n), (3, 1))
    for k in range(side * side):
        out[:, image_at + k] = (image_at, image_at + k // side, image_at + k % side)
    return out


def vision_capture(folder: Path, prompts: list[dict], logits_shift: float = 0.0) -> ModelCapture:
    """prompts: [{"reference": [tower per image], "device": [...], "positions": (ref, dev) or None}]."""
    writer = CaptureWriter(folder)
    records = []
    for i, spec in enumerate(prompts):
        prompt = PromptInput(index=i, id=f"p{i + 1}", label=f"prompt number {i + 1}", token_ids=(0, 1, 2))
        rows = np.eye(4, 16, dtype=np.float32) * 10
        tokens = tuple(int(t) for t in rows.argmax(1))
        np.save(writer.logits_path("reference", i), rows)
        np.save(writer.logits_path("device", i), rows + np.float32(logits_shift) * np.arange(16, dtype=np.float32))
        for side, k in (("reference", 0), ("device", 1)):
            arrays = {"offsets": np.asarray([3 + 10 * j for j in range(len(spec[side]))], dtype=np.int64)}
            for j, t in enumerate(spec[side]):
                arrays[f"embeds_{j}"], arrays[f"deepstack_{j}"] = t["embeds"], t["deepstack"]
            if spec.get("positions") is not None:
                arrays["positions"] = spec["positions"][k]
            np.savez(writer.tap_path(side, "vision", i), **arrays)
        records.append(PromptCapture(prompt, prompt.token_ids + tokens, tuple(range(2, 6)),
                                     {"reference": tokens, "device": tokens}, {}))
    return writer.finish(ModelCapture("toy-vl", records, {"positions_mode": "continuation", "max_tokens": 4}))


def judged(capture: ModelCapture, thresholds=VISION + (KL,)):
    vision = measure_vision(capture)
    return vision, judge_thresholds(thresholds, measure(capture), vision=vision)


def same(rng, n_images: int = 1, n: int = 12) -> dict:
    images = [tower(rng, 4) for _ in range(n_images)]
    return {"reference": images, "device": [dict(t) for t in images], "positions": (positions(n), positions(n))}


def test_same_tower_passes_with_every_metric_in_the_report(tmp_path):
    rng = np.random.default_rng(0)
    capture = vision_capture(tmp_path / "c", [same(rng, 2), same(rng)])
    vision, verdicts = judged(capture)
    assert len(vision.images) == 3 and all(i.values["vision_cosine"] == pytest.approx(1.0) for i in vision.images)
    assert all(v.passed for v in verdicts.values()), [v.message for v in verdicts.values()]
    assert "36 positions of 3 prompts" not in verdicts["mrope_mismatches"].message  # 2 prompts, 12 each
    assert "24 positions of 2 prompts compared exactly" in verdicts["mrope_mismatches"].message
    summary = vision.summary()
    assert summary["vision_cosine"]["min"] == pytest.approx(1.0) and summary["mrope_mismatches"]["max"] == 0
    report: dict = {}
    add_vision(report, vision, lambda i: f"p{i + 1}")
    json.dumps(report)
    header, rows = vision_rows(report)
    assert header[3] == "vision cosine" and [r[:2] for r in rows] == [["p1", "0"], ["p1", "1"], ["p2", "0"]]
    assert rows[0][-1] == "same"


def test_a_scaled_tower_fails_the_vision_checks_and_says_vision(tmp_path):
    rng = np.random.default_rng(1)
    spec = same(rng, 2)
    spec["device"][1] = {k: v * np.float32(1.05) for k, v in spec["device"][1].items()}
    vision, verdicts = judged(vision_capture(tmp_path / "c", [spec, same(rng)]))
    rel = verdicts["vision_relative_l2"]
    assert rel.failed and rel.value == pytest.approx(0.05, rel=1e-3)
    assert "the vision side moved" in rel.message and "prompt p1" in rel.message and "image 1" in rel.message
    assert rel.worst["image"] == 1 and rel.worst["prompt_id"] == "p1" and rel.n_failing == 1
    assert verdicts["vision_cosine"].passed  # a scale leaves every cosine at 1: relative L2 is what sees it
    assert verdicts["mrope_mismatches"].passed


def test_a_deepstack_level_alone_moving_is_caught_and_named(tmp_path):
    rng = np.random.default_rng(2)
    spec = same(rng)
    spec["device"][0] = dict(spec["device"][0], deepstack=spec["device"][0]["deepstack"] + np.float32(0.3))
    vision, verdicts = judged(vision_capture(tmp_path / "c", [spec]))
    assert verdicts["vision_relative_l2"].failed and "deepstack 0" in verdicts["vision_relative_l2"].message
    assert vision.images[0].worst_part["vision_max_abs_diff"] == "deepstack 0"


@pytest.mark.parametrize("side", ["device", "reference"])
def test_nan_in_the_tower_fails_every_vision_metric(tmp_path, side):
    rng = np.random.default_rng(3)
    spec = same(rng)
    spec[side][0] = dict(spec[side][0], embeds=spec[side][0]["embeds"].copy())
    spec[side][0]["embeds"][1, 2] = np.inf if side == "device" else np.nan
    _, verdicts = judged(vision_capture(tmp_path / "c", [spec]))
    for check in ("vision_cosine", "vision_relative_l2", "vision_max_abs_diff"):
        assert verdicts[check].failed and f"non-finite values in the {side}'s embeddings" in verdicts[check].message
    assert np.isnan(measure_vision(vision_capture(tmp_path / "c", [spec])).summary()["vision_cosine"]["min"])


def test_a_different_number_of_image_tokens_cannot_pass(tmp_path):
    rng = np.random.default_rng(4)
    spec = same(rng)
    spec["device"][0] = tower(rng, 5)
    _, verdicts = judged(vision_capture(tmp_path / "c", [spec]))
    assert verdicts["vision_cosine"].failed and "device embeddings [5, 16]" in verdicts["vision_cosine"].message


def test_collapsed_mrope_positions_fail_naming_the_first_position(tmp_path):
    rng = np.random.default_rng(5)
    spec = same(rng)
    collapsed = positions(12)
    collapsed[1:] = collapsed[0]
    spec["positions"] = (positions(12), collapsed)
    _, verdicts = judged(vision_capture(tmp_path / "c", [spec]))
    v = verdicts["mrope_mismatches"]
    assert v.failed and v.value == 3  # the 2x2 image's tokens but its first: (3, 3, 3) stays
    assert "position 4: device [3, 3, 3], reference [3, 3, 4]" in v.message and "the vision side moved" in v.message
    assert verdicts["vision_cosine"].passed


def test_positions_compared_over_the_tokens_both_sides_ran(tmp_path):
    rng = np.random.default_rng(6)
    spec = same(rng)
    spec["positions"] = (positions(12), positions(14))  # the device ran the whole sequence, the reference less
    _, verdicts = judged(vision_capture(tmp_path / "c", [spec]))
    assert verdicts["mrope_mismatches"].passed and "12 positions" in verdicts["mrope_mismatches"].message


def test_a_logit_failure_with_a_clean_tower_says_language(tmp_path):
    rng = np.random.default_rng(7)
    _, verdicts = judged(vision_capture(tmp_path / "c", [same(rng)], logits_shift=0.5))
    assert verdicts["kl_divergence"].failed
    assert "the language side moved" in verdicts["kl_divergence"].message
    spec = same(rng)
    spec["device"][0] = {k: v * np.float32(1.1) for k, v in spec["device"][0].items()}
    _, verdicts = judged(vision_capture(tmp_path / "d", [spec], logits_shift=0.5))
    assert "the vision side moved too (vision_relative_l2" in verdicts["kl_divergence"].message


def test_no_image_and_no_mrope_is_a_skip_not_a_pass(tmp_path):
    capture = vision_capture(tmp_path / "c", [{"reference": [], "device": [], "positions": None}])
    _, verdicts = judged(capture, VISION)
    assert all(verdicts[t.id].skipped for t in VISION), [v.message for v in verdicts.values()]
    assert "no compared prompt has an image" in verdicts["vision_cosine"].skipped


def test_metric_values():
    a = np.array([[3.0, 4.0]])
    assert compare_parts(a, a) == {"vision_cosine": 1.0, "vision_relative_l2": 0.0, "vision_max_abs_diff": 0.0}
    got = compare_parts(a * 2, a)
    assert got["vision_cosine"] == pytest.approx(1.0) and got["vision_relative_l2"] == pytest.approx(1.0)
    assert got["vision_max_abs_diff"] == 4.0


def _config(tmp_path: Path, thresholds) -> ModelConfig:
    return ModelConfig(name="m", path=tmp_path / "m.yaml", model_name="org/m", serve=ServeConfig(),
                       precision=PrecisionConfig(prompts=(), max_tokens=4, thresholds=thresholds))


def test_vision_checks_need_a_vision_language_checkpoint(tmp_path):
    text, vl = tmp_path / "text", tmp_path / "vl"
    text.mkdir(), vl.mkdir()
    (text / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (vl / "config.json").write_text(json.dumps({"vision_config": {}, "image_token_id": 7}))
    assert model_taps(_config(tmp_path, (REL,)), vl) == ("vision",)
    assert model_taps(_config(tmp_path, (KL,)), vl) == ()
    with pytest.raises(NpuprecError, match=r"m.yaml: precision.thresholds bounds vision_relative_l2.*no vision"):
        model_taps(_config(tmp_path, (REL,)), text)


def test_vision_bounds_in_yaml(tmp_path):
    from pytest_npuprec.config.loader import ConfigError, load_config

    base = ("model_name: org/m\nserve: {dtype: bfloat16, max_model_len: 512}\nprecision:\n  max_tokens: 4\n"
            "  prompts: [hi]\n  thresholds:\n    cosine_similarity: {min: 0.99}\n")
    path = tmp_path / "m.yaml"
    path.write_text(base + "    vision_cosine: {min: 0.9999, reduce: min}\n    mrope_mismatches: {max: 0}\n")
    config = load_config(path)
    assert {"vision_cosine", "mrope_mismatches"} <= set(config.check_ids)
    assert not any(t.metric.startswith("vision") for t in config.decode_thresholds)
    path.write_text(base + "    vision_relative_l2: {max: 0.01, phase: decode}\n")
    with pytest.raises(ConfigError, match="vision_relative_l2.*per image of the teacher-forced scoring pass"):
        load_config(path)


def test_reference_tap_on_the_stand_in_matches_its_tower_and_rope_index(tmp_path):
    """transformers FP32 on the shipped VL stand-in: the tap writes get_image_features' embeddings (and deepstack)
    per image at the placeholder offsets, and get_rope_index's positions, for an image prompt and a text-only one."""
    from pytest_npuprec.capture.prompts import load_tokenizer, render_prompts
    from pytest_npuprec.capture.session import scored_positions
    from pytest_npuprec.config.loader import load_config
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest

    repo = Path(__file__).resolve().parents[2]
    config = load_config(repo / "tests/e2e/models/configs/tiny-Qwen3-VL-8B-Instruct.yaml")
    model = repo / "pytest_npuprec/standins/shipped/tiny-Qwen3-VL-8B-Instruct"
    prompts = {p.id: p for p in render_prompts(config, load_tokenizer(model, False), model)}
    picked = [prompts["two-images"], prompts["text-only"]]
    with TransformersRunner(model, False) as ref:
        requests = [ScoreRequest(p.token_ids, scored_positions(len(p.token_ids) - 1, len(p.token_ids), "continuation"),
                                 tmp_path / f"{i}.npy", {"vision": tmp_path / f"{i}.npz"}, images=p.images)
                    for i, p in enumerate(picked)]
        ref.score(requests)
    with np.load(tmp_path / "0.npz") as two:
        assert list(two["offsets"]) == [picked[0].media_positions[0], picked[0].media_positions[9]]
        assert two["embeds_0"].shape[0] == 9 and two["embeds_1"].shape[0] == 4
        assert two["deepstack_0"].shape == (1, *two["embeds_0"].shape) and np.isfinite(two["embeds_0"]).all()
        pos = two["positions"]
        assert pos.shape == (3, max(requests[0].positions) + 1)  # the reference runs up to its last scored row
        image = list(picked[0].media_positions[:9])
        assert len({tuple(pos[:, i]) for i in image}) == 9 and len(set(pos[0, image])) == 1  # a 3 x 3 grid, one t
    with np.load(tmp_path / "1.npz") as text:
        n = max(requests[1].positions) + 1
        assert list(text["offsets"]) == [] and (text["positions"] == np.tile(np.arange(n), (3, 1))).all()
