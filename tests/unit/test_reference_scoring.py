"""precision.reference_scoring: device: the device generates first, the reference scores prompt + the device's
continuation in one teacher-forced pass and generates nothing; its argmax on those rows stands for its greedy
tokens, so token agreement (tie-aware) fails where the device picks what the reference would not."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from pytest_npuprec.capture.records import PromptInput, load_capture
from pytest_npuprec.capture.session import capture_model
from pytest_npuprec.config.loader import ConfigError, load_config

VOCAB = 11


class Runner:
    """A side whose logits at position p peak at token `favourite(p)`; the device generates `continuation`."""

    def __init__(self, side, events, continuation=(5, 6, 7), favourite=lambda p: (p * 3) % VOCAB, gap=4.0):
        self.side, self.events, self.info = side, events, {"side": side}
        self.continuation, self.favourite, self.gap = continuation, favourite, gap

    def generate(self, prompts, max_tokens):
        self.events.append(f"{self.side} generate {len(prompts)}")
        return [tuple(self.continuation[:max_tokens]) for _ in prompts]

    def score(self, requests):
        self.events.append(f"{self.side} score {len(requests)}")
        for _, positions, out, *_ in requests:
            rows = np.zeros((len(positions), VOCAB), dtype=np.float32)
            for r, p in enumerate(positions):
                rows[r, self.favourite(p)] = self.gap
            np.save(out, rows)


def factory(runner):
    @contextlib.contextmanager
    def run():
        runner.events.append(f"{runner.side} start")
        yield runner
        runner.events.append(f"{runner.side} stop")
    return run


PROMPTS = [PromptInput(0, "p1", "a", (1, 2)), PromptInput(1, "p2", "b", (3,)),
           PromptInput(2, "perplexity", "text", (4, 5, 6), "perplexity")]


def test_device_first_and_the_reference_never_generates(tmp_path):
    events = []
    reference, device = Runner("reference", events), Runner("device", events, continuation=(9, 8, 7))
    capture = capture_model("toy", PROMPTS, 3, "continuation", factory(reference), factory(device), tmp_path / "c",
                            device_runs=2, reference_scoring="device")
    assert events == ["device start", "device generate 2", "device score 3", "device generate 2", "device score 3",
                      "device stop", "reference start", "reference score 3", "reference stop"]
    p1, p2, text = capture.prompts
    assert p1.scored == (1, 2, 9, 8, 7) and p1.positions == (1, 2, 3) and p2.scored == (3, 9, 8, 7)
    assert text.scored == (4, 5, 6) and text.positions == (0, 1)
    # the reference's argmax at each continuation row: position p favours (3p) % 11
    assert p1.generated["reference"] == (3, 6, 9) and p2.generated["reference"] == (0, 3, 6)
    assert capture.meta["reference_scoring"] == "device"
    again = load_capture(capture.folder)
    assert again.prompts[0].generated["reference"] == (3, 6, 9)


def test_default_is_todays_order(tmp_path):
    events = []
    capture_model("toy", PROMPTS[:1], 2, "continuation", factory(Runner("reference", events)),
                  factory(Runner("device", events)), tmp_path / "c")
    assert events[:4] == ["reference start", "reference generate 1", "reference score 1", "reference stop"]


def _token_agreement(tmp_path, device_continuation, gap=4.0):
    from pytest_npuprec.measure.thresholds import measure

    events = []
    capture = capture_model("toy", PROMPTS[:1], 3, "continuation", factory(Runner("reference", events, gap=gap)),
                            factory(Runner("device", events, continuation=device_continuation)), tmp_path / "c",
                            reference_scoring="device")
    summary = measure(capture, None).prompts[0]
    return summary.first_status, summary.prefix_status, summary.prefix_length


def test_token_agreement_reads_the_reference_argmax_and_fails_a_wrong_device(tmp_path):
    assert _token_agreement(tmp_path / "a", (3, 6, 9)) == ("match", "match", 3)
    assert _token_agreement(tmp_path / "b", (3, 6, 1)) == ("match", "mismatch", 2)  # the device's 3rd pick is wrong
    assert _token_agreement(tmp_path / "c", (4, 6, 9))[0] == "mismatch"


def test_a_bf16_tie_is_still_a_tie(tmp_path):
    """The reference favours token 3 at the first row by less than one BF16 ulp over the device's token 0."""
    assert _token_agreement(tmp_path, (0, 6, 9), gap=2.0 ** -134)[0] == "tie"


CONFIG = """
model_name: org/M
precision:
  max_tokens: 4
  prompts: ["x"]
  thresholds: {token_agreement: {min: 1.0}}
"""


def test_config_keys_default_and_are_validated(tmp_path):
    path = tmp_path / "M.yaml"
    path.write_text(CONFIG)
    precision = load_config(path).precision
    assert precision.reference_scoring == "reference" and precision.reference_memory == "auto"
    path.write_text(CONFIG + "  reference_scoring: device\n  reference_memory: streamed\n")
    precision = load_config(path).precision
    assert precision.reference_scoring == "device" and precision.reference_memory == "streamed"
    for key, value, options in (("reference_scoring", "host", "reference, device"),
                                ("reference_memory", "disk", "auto, in_memory, streamed")):
        path.write_text(CONFIG + f"  {key}: {value}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(path) in str(info.value) and f"precision.{key}: expected one of {options}, got '{value}'" in str(
            info.value)


def test_a_baseline_of_one_mode_is_stale_in_the_other(tmp_path):
    from pytest_npuprec.baselines.provenance import changes, precision_inputs

    path = tmp_path / "M.yaml"
    path.write_text(CONFIG)
    reference = {"precision": precision_inputs(load_config(path))}
    assert "reference_scoring" not in reference["precision"]  # baselines recorded before the key stay valid
    path.write_text(CONFIG + "  reference_scoring: device\n")
    device = {"precision": precision_inputs(load_config(path))}
    assert changes(reference, device) == ["precision: reference_scoring new"]
    path.write_text(CONFIG + "  reference_memory: streamed\n")
    assert changes(reference, {"precision": precision_inputs(load_config(path))}) == []  # the same logits
