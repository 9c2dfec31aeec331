import json
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.config.loader import load_config
from pytest_npuprec.report.document import build_report
from pytest_npuprec.report.render import render_markdown, render_terminal
from pytest_npuprec.report.write import atomic_write_text, write_report
from pytest_npuprec.measure import Measured
from pytest_npuprec.measure.steps import decode_summary, measure_decode
from pytest_npuprec.report.steps import add_decode
from pytest_npuprec.verdicts import judge_checks

CONFIG = """
model_name: org/Toy
precision:
  max_tokens: 4
  prompts: ["one", "two", "three"]
  thresholds:
    token_agreement: {min: 0.99}
    cosine_similarity: {min: 0.999}
"""


@pytest.fixture
def report(tmp_path, make_capture, confident_logits):
    (tmp_path / "Toy.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "Toy.yaml")
    device = [r.copy() for r in confident_logits]
    device[1] = -device[1]  # prompt p2 is wrong
    capture = make_capture(confident_logits, device)
    m = measure(capture)
    decode = measure_decode(capture, m)
    verdicts = judge_checks(config, Measured(m, decode=decode))
    meta = {"positions_mode": "continuation", "max_tokens": 4, "versions": {"vllm": "0.0-test", "torch_npu": None},
            "device": {"platform": "cpu", "engine_kwargs": {"dtype": "bfloat16"}},
            "reference": {"platform": "cpu", "dtype": "float32"}}
    report = build_report(config, m, verdicts, meta, decode=lambda t: f"<{t}>")
    add_decode(report, decode, decode_summary(capture, decode))
    return report


def test_report_has_prompt_rows_and_aggregates(report):
    assert report["model"] == "Toy" and report["passed"] is False
    assert [p["id"] for p in report["prompts"]] == ["p1", "p2", "p3"]
    p2 = report["prompts"][1]
    assert p2["first_token"] == "mismatch" and p2["metrics"]["cosine_similarity"] == pytest.approx(-1.0)
    assert p2["device_first_token"]["text"].startswith("<")
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"finite_logits", "token_agreement", "cosine_similarity", "cosine_similarity-decode"}
    assert checks["cosine_similarity"]["passed"] is False and checks["cosine_similarity"]["worst"]["prompt_id"] == "p2"
    assert report["run"]["versions"]["vllm"] == "0.0-test"
    assert report["metrics"]["cosine_similarity"]["min"] == pytest.approx(-1.0)


def test_terminal_and_markdown_tables(report):
    text = render_terminal(report)
    for part in ("device 1st", "reference 1st", "match", "cosine", "rel L2", "p2", "NO", "cosine_similarity",
                 "FAIL", "overall: FAIL", "vocab 50", "kl_divergence", "mean (no threshold)"):
        assert part in text, part
    md = render_markdown(report)
    assert "| # | prompt |" in md and "**Overall: FAIL**" in md and "vllm 0.0-test" in md


def test_written_json_is_valid_and_complete(report, tmp_path):
    paths = write_report(report, tmp_path / "out")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["checks"] == report["checks"]
    assert paths["markdown"].read_text().startswith("# Toy precision report")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Toy.json", "Toy.md"]  # no temp files left


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")


    with pytest.raises(TypeError):
        atomic_write_text(target, object())  # not text: the write fails half-way
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_capture_folder_is_complete_or_absent(tmp_path, confident_logits):
    from pytest_npuprec.capture.records import CaptureWriter

    writer = CaptureWriter(tmp_path / "cap")
    np.save(writer.logits_path("device", 0), confident_logits[0])
    writer.abandon()
    assert list(tmp_path.iterdir()) == []


class FakeRunner:
    def __init__(self, side, events):
        self.side, self.info, self.events, self.calls = side, {}, events, 0

    def generate(self, prompts, max_tokens):
        self.events.append(f"{self.side} generate {len(prompts)}")
        return [(5, 6, 7)[:max_tokens] for _ in prompts]

    def score(self, requests):
        self.events.append(f"{self.side} score {len(requests)}")
        for _, positions, out, *_ in requests:
            self.calls += 1
            np.save(out, np.full((len(positions), 11), self.calls, dtype=np.float32))


def fake_factory(side, events):
    import contextlib

    @contextlib.contextmanager
    def run():
        events.append(f"{side} start")
        yield FakeRunner(side, events)
        events.append(f"{side} stop")
    return run


def test_reference_is_released_before_the_device_engine_starts(tmp_path):
    """One engine at a time: the FP32 reference and the device are never resident together."""
    from pytest_npuprec.capture.records import PromptInput
    from pytest_npuprec.capture.session import capture_model

    events = []
    prompts = [PromptInput(0, "p1", "a", (1, 2)), PromptInput(1, "p2", "b", (3,))]
    capture = capture_model("toy", prompts, 3, "continuation", fake_factory("reference", events),
                            fake_factory("device", events), tmp_path / "cap")
    assert events == ["reference start", "reference generate 2", "reference score 2", "reference stop",
                      "device start", "device generate 2", "device score 2", "device stop"]
    assert capture.prompts[0].scored == (1, 2, 5, 6, 7) and capture.prompts[0].positions == (1, 2, 3)
    assert capture.prompts[1].positions == (0, 1, 2)


def test_repeat_runs_and_perplexity_text_are_captured(tmp_path):
    """Determinism: the device generates and scores again per run; the perplexity text is scored at
    every position, never generated from, and stays out of the compared prompts."""
    from pytest_npuprec.capture.records import PromptInput, load_capture
    from pytest_npuprec.capture.session import capture_model

    events = []
    prompts = [PromptInput(0, "p1", "a", (1, 2)), PromptInput(1, "perplexity", "text", (3, 4, 5, 6), "perplexity")]
    capture = capture_model("toy", prompts, 3, "continuation", fake_factory("reference", events),
                            fake_factory("device", events), tmp_path / "cap", device_runs=3)
    assert events.count("device generate 1") == 3 and events.count("reference generate 1") == 1
    assert events.count("device score 2") == 3  # the prompt and the perplexity text, one call per run
    [text] = capture.perplexity()
    assert text.scored == (3, 4, 5, 6) and text.positions == (0, 1, 2) and text.generated["device"] == ()
    assert [p.prompt.id for p in capture.compared()] == ["p1"]
    again = load_capture(capture.folder)
    assert again.device_runs == 3
    first = again.prompts[0]
    assert sorted(first.logits_files) == ["device", "device-run2", "device-run3", "reference"]
    assert first.generated["device-run3"] == (5, 6, 7)
    assert first.logits("device-run3")[0, 0] != first.logits("device")[0, 0]  # each run wrote its own file


def test_decode_rows_are_shown_beside_prefill(report):
    """Decode steps: their own checks, per-prompt columns and a summary. p2's device diverges at its first
    token, so none of its decode rows can be judged (only the token checks see it)."""
    checks = {c["check"]: c for c in report["checks"]}
    decode = checks["cosine_similarity-decode"]
    assert decode["passed"] and decode["n_values"] == 2 * 3, decode["message"]  # p1, p3: rows 1..3
    assert [p["decode"]["rows"] for p in report["prompts"]] == [3, 0, 3]
    assert report["prompts"][1]["decode"]["cosine_similarity"] is None
    assert report["decode_metrics"]["cosine_similarity"]["min"] == pytest.approx(1.0)
    lines = render_terminal(report).splitlines()
    assert "decode rows" in lines[1] and "dec cosine" in lines[1]
    assert any(row.startswith("cosine_similarity-decode") and "PASS" in row for row in lines)
