"""The audio-language stand-in through the real engine: audio prompts run green on a right device, its text
depends on the sound (or an audio fault could not be seen), and an audio-tower fault turns it red."""
import json

import numpy as np
import pytest

MODEL = "tiny-Qwen2-Audio-7B-Instruct"


def test_audio_standin_passes_and_its_text_depends_on_the_sound(run_suite, repo_config_dir):
    from pytest_npuprec.config.loader import load_config

    config = load_config(repo_config_dir / f"{MODEL}.yaml")
    result, report_dir = run_suite(MODEL)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-4000:]
    report = json.loads((report_dir / f"{MODEL}.json").read_text())
    assert report["passed"] and [c["check"] for c in report["checks"]] == list(config.check_ids)
    prompts = {p["id"]: p for p in report["prompts"]}
    low, high = prompts["pitch-low"], prompts["pitch-high"]
    # the same text with another sound: another answer, on both sides
    assert low["reference_text"].startswith("Low.") and high["reference_text"].startswith("High."), (low, high)
    assert low["device_text"] == low["reference_text"] and high["device_text"] == high["reference_text"]
    # and clearly other logits at the first answer position (same position, same text before it)
    capture = json.loads((report_dir / "captures" / MODEL / "capture.json").read_text())
    index = {p["prompt"]["id"]: p["prompt"]["index"] for p in capture["prompts"]}
    first = {pid: np.load(report_dir / "captures" / MODEL / f"reference-{index[pid]:03d}.npy")[0]
             for pid in ("pitch-low", "pitch-high")}
    assert np.max(np.abs(first["pitch-low"] - first["pitch-high"])) > 5.0
    # audio placeholder rows are not compared, and the report says so: 1 s = 25 tokens, 0.7 s = 17, 1.5 s + 1.8 s
    audio = report["run"]["audio_tokens"]
    assert audio["per_prompt"] == {"describe": 25, "pitch-low": 25, "pitch-high": 25, "chirp": 17, "kind": 25,
                                   "two-sounds": 37 + 45}, audio
    assert audio["compared"] is False and "image_tokens" not in report["run"]
    assert "audio placeholder positions not compared" in (report_dir / f"{MODEL}.md").read_text()


# fault -> a check that must fail (the language model's weights and kernels are untouched: only what it hears of
# the sound changed). Measured: see docs/model-classes.md, Audio-language models.
AUDIO_FAULTS = {"audio_mask": "kl_divergence-max"}


@pytest.mark.parametrize("fault", list(AUDIO_FAULTS))
def test_audio_faults_turn_it_red(run_suite, failed_checks, fault):
    result, _ = run_suite(MODEL, "--npuprec-fault", fault)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-4000:]
    failed = failed_checks(result, MODEL)
    assert AUDIO_FAULTS[fault] in failed, (fault, sorted(failed))
    assert "finite_logits" not in failed
