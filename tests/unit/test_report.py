import json
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.compare import measure
from pytest_npuprec.config.loader import load_config
from pytest_npuprec.report.document import build_report
from pytest_npuprec.report.render import render_markdown, render_terminal
from pytest_npuprec.report.write import atomic_write_text, write_report
from pytest_npuprec.verdicts import judge_all

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
    m = measure(make_capture(confident_logits, device))
    verdicts = judge_all(m, config.thresholds)
    meta = {"positions_mode": "continuation", "max_tokens": 4, "versions": {"vllm": "0.0-test", "torch_npu": None},
            "device": {"platform": "cpu", "engine_kwargs": {"dtype": "bfloat16"}},
            "reference": {"platform": "cpu", "dtype": "float32"}}
    return build_report(config, m, verdicts, meta, decode=lambda t: f"<{t}>")


def test_report_has_prompt_rows_and_aggregates(report):
    assert report["model"] == "Toy" and report["passed"] is False
    assert [p["id"] for p in report["prompts"]] == ["p1", "p2", "p3"]
    p2 = report["prompts"][1]
    assert p2["first_token"] == "mismatch" and p2["metrics"]["cosine_similarity"] == pytest.approx(-1.0)
    assert p2["device_first_token"]["text"].startswith("<")
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"finite_logits", "token_agreement", "cosine_similarity"}
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


def test_reference_is_released_before_the_device_engine_starts(tmp_path):
    """One engine at a time: the FP32 reference and the device are never resident together."""
    import contextlib

    from pytest_npuprec.capture.records import PromptInput
    from pytest_npuprec.capture.session import capture_model

    events = []

    class Fake:
        def __init__(self, side):
            self.side, self.info = side, {}

        def generate(self, prompts, max_tokens):
            return [(5, 6, 7)[:max_tokens] for _ in prompts]

        def score(self, tokens, positions, out):
            events.append(f"{self.side} score")
            np.save(out, np.zeros((len(positions), 11), dtype=np.float32))

    def factory(side):
        @contextlib.contextmanager
        def run():
            events.append(f"{side} start")
            yield Fake(side)
            events.append(f"{side} stop")
        return run

    prompts = [PromptInput(0, "p1", "a", (1, 2)), PromptInput(1, "p2", "b", (3,))]
    capture = capture_model("toy", prompts, 3, "continuation", factory("reference"), factory("device"),
                            tmp_path / "cap")
    assert events == ["reference start", "reference score", "reference score", "reference stop",
                      "device start", "device score", "device score", "device stop"]
    assert capture.prompts[0].scored == (1, 2, 5, 6, 7) and capture.prompts[0].positions == (1, 2, 3)
    assert capture.prompts[1].positions == (0, 1, 2)
