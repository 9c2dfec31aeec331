"""The HTML report: what its figures hold (report/figures.py), what the page shows (report/html.py), and that a
real headless browser renders it without console errors and not blank."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from pytest_npuprec.config.loader import load_config
from pytest_npuprec.measure import Measured
from pytest_npuprec.report.figures import DIFF_EDGES, figures
from pytest_npuprec.measure.steps import decode_summary, measure_decode
from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.report.document import build_report
from pytest_npuprec.report.html import render_html
from pytest_npuprec.report.steps import add_decode
from pytest_npuprec.report.write import write_report
from pytest_npuprec.verdicts import judge_checks

CONFIG = """
model_name: org/Toy
precision:
  max_tokens: 4
  prompts: ["one", "two", "three"]
  thresholds:
    token_agreement: {min: 0.99}
    kl_divergence: {max: 0.01}
    cosine_similarity: {min: 0.999}
"""


def _report(tmp_path, make_capture, reference, device):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "Toy.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "Toy.yaml")
    capture = make_capture(reference, device)
    m = measure(capture)
    decode = measure_decode(capture, m)
    verdicts = judge_checks(config, Measured(m, decode=decode))
    meta = {"positions_mode": "continuation", "max_tokens": 4, "versions": {"vllm": "0.0-test"},
            "device": {"platform": "cpu", "engine_kwargs": {"dtype": "bfloat16"}},
            "reference": {"platform": "cpu", "dtype": "float32"}}
    report = build_report(config, m, verdicts, meta, decode=lambda t: f"<tok{t}>")
    add_decode(report, decode, decode_summary(capture, decode))
    report["figures"] = figures(capture, m, decode, lambda t: f"<tok{t}>")
    return report, report["figures"]


@pytest.fixture
def failing(tmp_path, make_capture, confident_logits):
    device = [r.copy() for r in confident_logits]
    device[1][2] = device[1][2][::-1]  # prompt p2, its third position: another distribution
    return _report(tmp_path, make_capture, confident_logits, device)


def test_figures_find_the_worst_position_and_count_every_logit(failing, confident_logits):
    report, drawn = failing
    worst = drawn["worst"]
    assert (worst["prompt"], worst["position"]) == ("p2", 4)  # prompt of 3 tokens: rows are positions 2..5
    ref_row = confident_logits[1][2]
    assert worst["reference"][0]["text"] == f"<tok{int(np.argmax(ref_row))}>"
    assert worst["device"][0]["text"] == f"<tok{int(np.argmax(ref_row[::-1]))}>"
    assert sum(x["prob"] for x in worst["reference"]) <= 1.0 + 1e-9
    hist = drawn["abs_diff"]
    assert sum(hist["counts"]) == sum(r.size for r in confident_logits) and hist["nonfinite"] == 0
    assert hist["edges"] == DIFF_EDGES.tolist()
    series = drawn["series"]["p2"]["prefill"]
    assert series["positions"] == [2, 3, 4, 5] and np.argmax(series["kl_divergence"]) == 2
    assert "decode" in drawn["series"]["p1"]


def test_page_holds_the_verdicts_the_worst_tokens_and_the_plots(failing):
    report, drawn = failing
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and "FAIL" in page
    assert "<script" not in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "&lt;tok" in page  # token texts are escaped, never markup
    assert page.count("<svg") == 2 * 3 + 1  # KL and cosine per prompt, one histogram
    assert "cosine_similarity" in page and "prompt <b>p2</b>, position 4" in page


def test_non_finite_values_are_marked_not_dropped(tmp_path, make_capture, confident_logits):
    device = [r.copy() for r in confident_logits]
    device[0][1, 7] = np.inf
    report, drawn = _report(tmp_path, make_capture, confident_logits, device)
    assert drawn["abs_diff"]["nonfinite"] == 1
    assert drawn["worst"]["prompt"] == "p1" and drawn["worst"]["position"] == 3
    assert drawn["series"]["p1"]["prefill"]["kl_divergence"][1] in ("NaN", "+Inf")
    assert "✕" in render_html(report)


def test_written_beside_the_json_and_linked_from_the_markdown(failing, tmp_path):
    report, drawn = failing
    paths = write_report(report, tmp_path / "reports")
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")
    assert "[Toy.html](Toy.html)" in paths["markdown"].read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (./dev.sh setup installs "
                                                            "Debian's chromium when run as root)")


def _browse(page, tmp_path):
    """Screenshot of the page in headless Chromium; the console messages it logged."""
    tmp_path.mkdir(exist_ok=True)
    html = tmp_path / "page.html"
    html.write_text(page)
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          "--window-size=1200,1800", f"--screenshot={shot}", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    return shot, console, run


def _not_blank(png):
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return pixels.std() > 5 and (pixels < 128).mean() > 0.002  # text and bars, not a white page


@needs_browser
def test_a_real_browser_renders_the_page_without_console_errors(failing, tmp_path, make_capture, confident_logits):
    report, drawn = failing
    shot, console, run = _browse(render_html(report), tmp_path)
    assert shot.is_file(), run.stderr[-2000:]
    assert console == [], console
    assert _not_blank(shot)
    clean, _ = _report(tmp_path / "clean-config", make_capture, confident_logits, [r.copy() for r in confident_logits])
    assert clean["passed"]
    shot, console, run = _browse(render_html(clean), tmp_path / "clean")
    assert shot.is_file() and console == [] and _not_blank(shot), (console, run.stderr[-2000:])
    # the two probes can fail: a page with a script error is heard, a blank page is seen
    bad, console, _ = _browse("<!DOCTYPE html><html><body><script>undefinedCall()</script></body></html>",
                              tmp_path / "bad")
    assert any("undefinedCall" in line for line in console), console
    assert not _not_blank(bad)
