"""The vision-language stand-in through the real engine: image prompts run green on a right device, its text
depends on the image (or a vision fault could not be seen), and vision faults turn it red."""
import json

import numpy as np
import pytest

MODEL = "tiny-Qwen3-VL-8B-Instruct"


def test_vl_standin_passes_and_its_text_depends_on_the_image(run_suite, repo_config_dir):
    from pytest_npuprec.config.loader import load_config

    config = load_config(repo_config_dir / f"{MODEL}.yaml")
    result, report_dir = run_suite(MODEL)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-4000:]
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    assert report["passed"] and [c["check"] for c in report["checks"]] == list(config.check_ids)
    prompts = {p["id"]: p for p in report["prompts"]}
    red, blue = prompts["colour-red"], prompts["colour-blue"]
    # the same text with another image: another answer, on both sides
    assert red["reference_text"].startswith("Red") and blue["reference_text"].startswith("Blue"), (red, blue)
    assert red["device_text"] == red["reference_text"] and blue["device_text"] == blue["reference_text"]
    # and clearly other logits at the first answer position (same position, same text before it)
    capture = json.loads((report_dir / "captures" / MODEL / "capture.json").read_text())
    index = {p["prompt"]["id"]: p["prompt"]["index"] for p in capture["prompts"]}
    first = {pid: np.load(report_dir / "captures" / MODEL / f"reference-{index[pid]:03d}.npy")[0]
             for pid in ("colour-red", "colour-blue")}
    assert np.max(np.abs(first["colour-red"] - first["colour-blue"])) > 5.0
    # image placeholder rows are not compared, and the report says so
    images = report["run"]["image_tokens"]
    assert images["per_prompt"]["colour-red"] == 9 and images["per_prompt"]["two-images"] == 9 + 4
    assert images["compared"] is False
    assert "image placeholder positions not compared" in (report_dir / f"{MODEL}.md").read_text()


# fault -> a check that must fail (the language model's weights and kernels are untouched: only what it reads of
# the image changed). Measured (README, Vision-language models): mrope_collapsed flips the answer of one prompt and
# moves KL to 0.064 (bound 7e-4); vision_causal moves KL to 0.031 (manual run, not repeated here for CI time).
# vision_scale=1.05 and image_norm=0.1 are NOT seen by any logit check (KL max 5.6e-5 and 8.4e-5): only a
# comparison of the tower's output would see them.
VISION_FAULTS = {"mrope_collapsed": "kl_divergence-max"}


@pytest.mark.parametrize("fault", list(VISION_FAULTS))
def test_vision_faults_turn_it_red(run_suite, failed_checks, derive_config, fault):
    # without its (text-only) length prompts, which no vision fault can reach: they would only add CI time
    result, _ = run_suite(MODEL, "--npuprec-fault", fault,
                          config_dir=derive_config(MODEL, lambda doc: doc["precision"].pop("lengths")))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-4000:]
    failed = failed_checks(result, MODEL)
    assert VISION_FAULTS[fault] in failed, (fault, sorted(failed))
    assert "finite_logits" not in failed
