"""Baselines without an engine: recording and replaying the FP32 reference (tiny stand-ins through transformers),
provenance and staleness, atomic updates, and the drift rule on fabricated device records."""
from __future__ import annotations

import dataclasses
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest

from pytest_npuprec.baselines import BaselineError
from pytest_npuprec.baselines import session as bl
from pytest_npuprec.baselines.store import load_reference, publish
from pytest_npuprec.capture.prefix_cache import prefix_cache_inputs
from pytest_npuprec.capture.prompts import load_tokenizer, perplexity_input, render_prompts
from pytest_npuprec.capture.session import capture_model
from pytest_npuprec.capture.taps import model_taps
from pytest_npuprec.config.loader import ConfigError, load_config
from pytest_npuprec.measure.routing import compact_routes, compare_compact, measure_routing
from pytest_npuprec.measure.thresholds import measure
from pytest_npuprec.runners.reference import TransformersRunner
from pytest_npuprec.runners.scoring import ScoreRequest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "e2e" / "models" / "configs"
STANDINS = ["tiny-llama", "tiny-Qwen3Guard-Gen-4B", "tiny-Nanbeige4-3B-Thinking-2511", "tiny-BitCPM4-CANN-1B",
            "tiny-BitCPM4-0.5B", "tiny-BitCPM4-CANN-1B-unquantized", "tiny-Qwen3-30B-A3B", "tiny-ERNIE-4.5-21B-A3B"]


def _shrink(config, n_prompts=2, max_tokens=6):
    """Fewer prompts and tokens, no drift, and no prefix_cache check: its warm pass needs an engine's prefix cache,
    and both sides here are transformers."""
    checks = dataclasses.replace(config.precision.checks, prefix_cache=None)
    precision = dataclasses.replace(config.precision, prompts=config.precision.prompts[:n_prompts],
                                    max_tokens=max_tokens, drift=(), checks=checks, lengths=())
    return dataclasses.replace(config, precision=precision)


def _inputs(config, path):
    tok = load_tokenizer(path, config.serve.trust_remote_code)
    prompts = render_prompts(config, tok)
    rendered = list(prompts)
    if config.checks.perplexity:
        prompts.append(perplexity_input(config, tok, len(prompts)))
    return prompts + prefix_cache_inputs(config, tok, rendered, len(prompts))  # as orchestrate builds them


def _capture(config, path, prompts, folder, reference):
    """Both sides transformers FP32 (no engine): what capture_model records, with `reference` as the reference
    (and the taps the config's checks need, as orchestrate asks for them)."""
    return capture_model(config.name, prompts, config.precision.max_tokens, config.precision.positions,
                         reference=reference, device=lambda: TransformersRunner(path, config.serve.trust_remote_code),
                         folder=folder, meta={"versions": {}, "host": {}}, taps=model_taps(config, path))


def _record(config, path, baseline_dir, capture_dir):
    """Record a baseline of `config` as --npuprec-update-baselines does; returns (session, capture, measurements)."""
    prompts = _inputs(config, path)
    s = bl.open_session(config, bl.BaselineOptions("auto", baseline_dir, update=True), path, prompts)
    capture = _capture(config, path, prompts, capture_dir,
                       s.reference_factory(lambda: TransformersRunner(path, config.serve.trust_remote_code)))
    return s, capture, measure(capture)


@pytest.fixture(scope="module")
def llama_copy(tmp_path_factory):
    """A private copy of the tiny-llama stand-in (tests below change its files)."""
    from pytest_npuprec.standins import ensure_standin

    def copy():
        target = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
        shutil.copytree(ensure_standin("tiny-llama"), target)
        return target

    return copy


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, llama_copy):
    """tiny-llama recorded into a fresh baseline folder: (config, checkpoint, baseline dir, live capture)."""
    from pytest_npuprec.verdicts import judge_thresholds

    path = llama_copy()
    config = _shrink(load_config(CONFIGS / "tiny-llama.yaml"))
    root = tmp_path_factory.mktemp("baselines")
    s, capture, measured = _record(config, path, root, root.parent / "live-capture")
    capture.meta["device"] = {"platform": "cpu"}
    verdicts = judge_thresholds(config.thresholds, measured)
    s.update_lines = bl.update(s, capture, measured, verdicts)
    return config, path, root, capture


def test_replay_rebuilds_the_live_reference_exactly(recorded, tmp_path):
    """The baseline's logits are the live reference's, bit for bit, and every metric equals the live run's."""
    config, path, root, live = recorded
    prompts = _inputs(config, path)
    s = bl.open_session(config, bl.BaselineOptions("baseline", root), path, prompts)
    assert s.source == "baseline" and "matches today's" in s.reason
    replay = _capture(config, path, prompts, tmp_path / "replay", s.reference_factory(lambda: pytest.fail("live")))
    assert replay.meta["reference"]["source"] == "baseline"
    for a, b in zip(live.prompts, replay.prompts):
        assert a.generated["reference"] == b.generated["reference"]
        np.testing.assert_array_equal(a.logits("reference"), b.logits("reference"))
    m_live, m_base = measure(live), measure(replay)
    for name, cells in m_live.cells.items():
        for stat, value in cells.summary().items():
            assert m_base.cells[name].summary()[stat] == pytest.approx(value, rel=1e-6, abs=0), (name, stat)


def _within_size_budget(folder, n_rows, hidden, vocab):
    """A baseline is its FP32 lm_head input rows plus a small JSON: rows x hidden x 4 B (+ .npy headers) and
    under 300 B of tokens and checksums a row. At the wide benchmark's shapes (hidden 2560, vocab 151,936,
    224 rows) that is 2.4 MB, 1/57 of the 136 MB of logits; the stand-ins' vocabularies are too small for that
    ratio (hidden / vocab = 1/4 at tiny-llama), so the budget is checked on its parts."""
    files = {p.name: p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()}
    rows = sum(v for k, v in files.items() if k.startswith("rows-"))
    n_files = sum(1 for k in files if k.startswith("rows-"))
    assert rows == n_rows * hidden * 4 + 128 * n_files, (rows, n_rows, hidden)
    assert files["reference.json"] <= 300 * n_rows + 8192, files["reference.json"]


def test_baseline_is_small(recorded):
    _, _, root, live = recorded
    n_rows = sum(len(p.positions) for p in live.prompts)
    ref = load_reference(root / "tiny-llama", "tiny-llama")
    vocab, hidden = ref.lm_head["shape"]
    _within_size_budget(root / "tiny-llama", n_rows, hidden, vocab)


def test_update_writes_reference_and_device_record_and_says_what_changed(recorded):
    _, _, root, _ = recorded
    files = sorted(p.name for p in (root / "tiny-llama").rglob("*") if p.is_file())
    assert "reference.json" in files and any(f.startswith("rows-") for f in files)
    assert len(list((root / "tiny-llama" / "device").glob("cpu-*.json"))) == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary left behind"


def _stale(config, path, root, mode="auto"):
    return bl.open_session(config, bl.BaselineOptions(mode, root), path, _inputs(config, path))


def test_changed_prompt_is_never_used_silently(recorded):
    config, path, root, _ = recorded
    prompts = (dataclasses.replace(config.precision.prompts[0], text="The capital of Italy is"),
               *config.precision.prompts[1:])
    changed = dataclasses.replace(config, precision=dataclasses.replace(config.precision, prompts=prompts))
    s = _stale(changed, path, root)
    assert s.source == "live" and "does not match today's inputs" in s.reason and "prompts:" in s.reason
    with pytest.raises(BaselineError, match=r"does not match today's inputs: prompts: .*Record it again: "
                                            r"pytest -m npu --model tiny-llama --npuprec-update-baselines"):
        _stale(changed, path, root, "baseline")


def test_changed_max_tokens_is_stale(recorded):
    config, path, root, _ = recorded
    changed = dataclasses.replace(config, precision=dataclasses.replace(config.precision, max_tokens=7))
    with pytest.raises(BaselineError, match=r"precision: .*max_tokens"):
        _stale(changed, path, root, "baseline")


def test_changed_tokenizer_or_weights_is_stale(recorded, llama_copy):
    config, _, root, _ = recorded
    path = llama_copy()
    tok = json.loads((path / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 12345
    (path / "tokenizer_config.json").write_text(json.dumps(tok))
    with pytest.raises(BaselineError, match=r"tokenizer: tokenizer_config.json [0-9a-f]{12} -> [0-9a-f]{12}"):
        _stale(config, path, root, "baseline")

    path = llama_copy()
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    key = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] += 1
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    s = _stale(config, path, root)
    assert s.source == "live" and "weights: model.safetensors" in s.reason and "lm_head:" in s.reason


def test_missing_baseline_names_the_command(recorded, tmp_path):
    config, path, _, _ = recorded
    with pytest.raises(BaselineError, match=r"no baseline at .*tiny-llama; record one: pytest -m npu --model "
                                            r"tiny-llama --npuprec-update-baselines --npuprec-baseline-dir"):
        _stale(config, path, tmp_path, "baseline")
    s = _stale(config, path, tmp_path)
    assert s.source == "live" and s.reason.startswith("no baseline at")


def test_unreadable_baseline_is_an_error(recorded, tmp_path):
    config, path, root, _ = recorded
    shutil.copytree(root / "tiny-llama", tmp_path / "tiny-llama")
    (tmp_path / "tiny-llama" / "rows-000.npy").unlink()
    with pytest.raises(BaselineError, match=r"reference.json: unreadable baseline of tiny-llama \(rows-000.npy is "
                                            r"missing\); record it again"):
        _stale(config, path, tmp_path)


def test_tampered_rows_fail_the_checksum(recorded, tmp_path):
    config, path, root, _ = recorded
    shutil.copytree(root / "tiny-llama", tmp_path / "tiny-llama")
    rows = np.load(tmp_path / "tiny-llama" / "rows-001.npy")
    np.save(tmp_path / "tiny-llama" / "rows-001.npy", rows * 1.01)
    prompts = _inputs(config, path)
    s = bl.open_session(config, bl.BaselineOptions("baseline", tmp_path), path, prompts)
    with pytest.raises(BaselineError, match=r"prompt .*: the rebuilt logits do not match the recorded checksums"):
        _capture(config, path, prompts, tmp_path / "c", s.reference_factory(lambda: None))


def test_a_crash_mid_update_leaves_the_old_baseline_whole(recorded, tmp_path, monkeypatch):
    _, _, root, _ = recorded
    shutil.copytree(root / "tiny-llama", tmp_path / "tiny-llama")
    (tmp_path / "other-model").mkdir()
    (tmp_path / "other-model" / "reference.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    doc = json.loads((tmp_path / "tiny-llama" / "reference.json").read_text())
    calls = []

    def dying_save(file, array):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        Path(file).write_bytes(b"partial")

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        publish(tmp_path / "tiny-llama", (doc, {0: np.zeros((2, 2)), 1: np.zeros((2, 2))}))
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the old baseline whole, the other model untouched, no temporary left


def test_device_record_only_from_a_clean_run(recorded, tmp_path):
    from pytest_npuprec.verdicts import judge_thresholds

    config, path, _, _ = recorded
    s, capture, measured = _record(config, path, tmp_path, tmp_path / "cap")
    capture.meta["device"] = {"platform": "cpu"}
    verdicts = judge_thresholds(config.thresholds, measured)
    key = next(iter(v for v in verdicts if v != "finite_logits"))
    verdicts[key] = dataclasses.replace(verdicts[key], passed=False)
    lines = bl.update(s, capture, measured, verdicts)
    assert any("device record NOT updated: 1 check(s) failed" in line for line in lines), lines
    assert (tmp_path / "tiny-llama" / "reference.json").is_file()
    assert not (tmp_path / "tiny-llama" / "device").exists()
    assert any(line.strip().startswith("reference.json: - ->") for line in lines), lines


def test_post_processing_not_reproduced_refuses_a_baseline(recorded, llama_copy, tmp_path):
    """config.json asks for logit scaling the Llama code never applies: the rebuilt logits would be wrong, so
    recording refuses (it never writes wrong logits)."""
    config, _, _, _ = recorded
    path = llama_copy()
    cfg = json.loads((path / "config.json").read_text())
    cfg["logit_scale"] = 2.0
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BaselineError, match=r"logits rebuilt from the lm_head inputs .* differ from the live "
                                            r"reference's .* Run it with --npuprec-reference live"):
        _record(config, path, tmp_path, tmp_path / "cap")
    assert not (tmp_path / "tiny-llama").exists()


def test_post_processing_is_reproduced():
    import torch

    from pytest_npuprec.baselines.lm_head import rebuild

    rows, weight = np.random.default_rng(0).standard_normal((3, 8), dtype=np.float32), torch.randn(11, 8)
    plain = rows @ weight.numpy().T
    close = dict(rtol=1e-5, atol=1e-6)  # numpy's matmul vs torch's: the last bits differ
    np.testing.assert_allclose(rebuild(rows, weight, {}), plain, **close)
    np.testing.assert_allclose(rebuild(rows, weight, {"logit_scale": 0.5}), plain * 0.5, **close)
    np.testing.assert_allclose(rebuild(rows, weight, {"logits_scaling": 4.0}), plain / 4, **close)
    np.testing.assert_allclose(rebuild(rows, weight, {"final_logit_softcapping": 2.0}), np.tanh(plain / 2) * 2, **close)


@pytest.mark.parametrize("model", STANDINS)
def test_committed_baseline_matches_today_and_the_live_reference(model, tmp_path):
    """Each committed baseline is valid for today's stand-in, replays its recorded checksums, and agrees with the
    live reference on this CPU within the FP32 summation-order bound (lm_head.reorder_bound): bit for bit only on
    the CPU that recorded it (first prompt; the e2e suite runs every prompt on these baselines)."""
    from pytest_npuprec.baselines.lm_head import checksum_mismatch, read_weight, rebuild, reorder_bound
    from pytest_npuprec.standins import ensure_standin

    config = load_config(CONFIGS / f"{model}.yaml")
    path = ensure_standin(model)
    if config.checks.qat_equivalence:  # the device (and the reference) run the converted checkpoint
        from pytest_npuprec.runners.converter import convert_checkpoint

        path = convert_checkpoint(config.checks.qat_equivalence, path, tmp_path / "converted")
    prompts = _inputs(config, path)
    s = bl.open_session(config, bl.BaselineOptions("baseline", REPO / "baselines"), path, prompts)
    assert s.source == "baseline", s.reason
    baseline = load_reference(REPO / "baselines" / model, model)
    first = baseline.prompts[0]
    out = tmp_path / "replay.npy"
    weight = weakref.ref(s.weight)
    routed = first.routing_file is not None
    taps = (lambda side: {"routing": tmp_path / f"{side}.routing.npz"}) if routed else (lambda side: {})
    assert routed == bool(model_taps(config, path))  # a MoE config's baseline holds its routing
    with s.reference_factory(lambda: None)() as ref:
        assert ref.generate([prompts[0].token_ids], config.precision.max_tokens) == [first.generated]
        ref.score([ScoreRequest(first.scored, first.positions, out, taps("replay"))])
    assert weight() is None  # the lm_head weight is freed with the replay, before a device engine would start
    with TransformersRunner(path, config.serve.trust_remote_code) as live:
        live.score([ScoreRequest(first.scored, first.positions, tmp_path / "live.npy", taps("live"))])
    if routed:
        _routing_holds_on_this_cpu(tmp_path / "replay.routing.npz", tmp_path / "live.routing.npz",
                                   config.precision.routing_tie_margin)
    replayed, live_logits = np.load(out), np.load(tmp_path / "live.npy")
    assert checksum_mismatch(replayed, first.checksums) is None
    weight_np, _ = read_weight(path, baseline.lm_head["key"])
    layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    bound = reorder_bound(first.rows(), weight_np, layers)
    excess = np.abs(replayed.astype(np.float64) - live_logits) / bound
    assert excess.max() <= 1.0, f"replay vs live: |diff| up to {excess.max():.2f}x the FP32 reorder bound"
    import torch  # the bound still sees a real error: the same rows rounded to BF16 leave it

    bf16_rows = torch.from_numpy(np.array(first.rows())).bfloat16().float()
    wrong = rebuild(bf16_rows.numpy(), torch.from_numpy(weight_np), baseline.lm_head["postprocess"])
    assert (np.abs(wrong.astype(np.float64) - live_logits) / bound).max() > 10
    vocab, hidden = baseline.lm_head["shape"]
    _within_size_budget(REPO / "baselines" / model, sum(len(p.positions) for p in baseline.prompts), hidden, vocab)



def _routing_holds_on_this_cpu(replayed, live, tie_margin):
    """The replayed routing against the live reference of whatever CPU runs this: another CPU's summation order
    moves router logits by FP32 rounding, which can swap a near-tie but nothing beyond the tie margin. So every
    replayed expert set must agree with the live logits within the margin (the rule the check itself applies), and
    the k-th logit move by less than it; the same rule sees a real difference (the last-ranked experts)."""
    from pytest_npuprec.measure.routing import tie_floor

    with np.load(replayed) as r, np.load(live) as lv:
        kept, logits, top_k = {k: r[k] for k in ("top_ids", "kth", "gaps")}, lv["router_logits"], int(lv["top_k"])
    now = compact_routes(logits, top_k, tie_margin)
    agree, exact, margin, invalid = compare_compact(now, kept["top_ids"], tie_margin)
    assert agree.all() and not invalid.any(), f"replayed routes beyond the tie margin: worst margin {margin.max():.3g}"
    moved = np.abs(kept["kth"].astype(np.float64) - now["kth"])
    assert (moved <= tie_floor(now["kth"].astype(np.float64), tie_margin)).all(), moved.max()
    last = np.argsort(logits, axis=-1, kind="stable")[..., :top_k]
    assert not compare_compact(now, last, tie_margin)[0].any()


# --- a MoE model's baseline: its routing, compact, replayed exactly ----------------------------------------------

MOE = "tiny-Qwen3-30B-A3B"


@pytest.fixture(scope="module")
def recorded_moe(tmp_path_factory):
    """The Qwen3-MoE stand-in recorded with its routing: (config, checkpoint, baseline dir, live capture)."""
    from pytest_npuprec.standins import ensure_standin
    from pytest_npuprec.verdicts import judge_thresholds

    path = ensure_standin(MOE)
    config = _shrink(load_config(CONFIGS / f"{MOE}.yaml"))
    root = tmp_path_factory.mktemp("baselines-moe")
    s, capture, measured = _record(config, path, root, root.parent / "live-moe")
    capture.meta["device"] = {"platform": "cpu"}
    bl.update(s, capture, measured, judge_thresholds(config.thresholds, measured,
                                                     measure_routing(capture, config.precision.routing_tie_margin)))
    return config, path, root, capture


def test_replay_rebuilds_the_live_routing_exactly(recorded_moe, tmp_path):
    """The replayed routing is the live reference's compact routing bit for bit, and so is every routing figure:
    against the device's routes and against any other choice of experts (flips, ties and their margins)."""
    config, path, root, live = recorded_moe
    margin = config.precision.routing_tie_margin
    prompts = _inputs(config, path)
    s = bl.open_session(config, bl.BaselineOptions("baseline", root), path, prompts)
    assert s.source == "baseline", s.reason
    replay = _capture(config, path, prompts, tmp_path / "replay", s.reference_factory(lambda: pytest.fail("live")))
    compared = [(a, b) for a, b in zip(live.compared(), replay.compared())]
    assert compared and all("routing" in a.tap_files for a, _ in compared)
    rng = np.random.default_rng(0)
    for a, b in compared:
        tap, kept = a.tap("routing", "reference"), b.tap("routing", "reference")
        assert "router_logits" not in kept  # the baseline holds the compact form only
        want = compact_routes(tap["router_logits"], int(tap["top_k"]), margin)
        for key, array in want.items():
            assert kept[key].dtype == array.dtype
            np.testing.assert_array_equal(kept[key], array)
        ids = np.stack([rng.permutation(want["gaps"].shape[-1])[:int(tap["top_k"])]
                        for _ in range(want["kth"].size)]).reshape(want["top_ids"].shape)
        for x, y in zip(compare_compact(want, ids, margin), compare_compact(kept, ids, margin)):
            np.testing.assert_array_equal(x, y)
    m_live, m_base = measure_routing(live, margin), measure_routing(replay, margin)
    assert m_live.n_routes > 0
    for field in dataclasses.fields(m_live):
        x, y = getattr(m_live, field.name), getattr(m_base, field.name)
        assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, field.name


def test_moe_baseline_routing_is_small(recorded_moe):
    """The compact routing is at most 1/20 of the hidden row a baseline keeps per token (and of the logit row)."""
    _, _, root, live = recorded_moe
    doc = json.loads((root / MOE / "reference.json").read_text())
    routing = doc["routing"]
    assert routing["arrays"] == {"top_ids": "uint8", "kth": "float32", "gaps": "float16"}
    assert routing["share_of_hidden_row"] <= 1 / 20 and routing["share_of_logit_row"] <= 1 / 20
    files = sorted(p.name for p in (root / MOE).glob("routing-*.npz"))
    assert len(files) == len(list(live.compared())), files
    assert "provenance" in doc and "routing_tie_margin" in doc["provenance"]["precision"]


def test_routing_tie_margin_and_routing_checks_make_a_moe_baseline_stale(recorded_moe):
    """The compact routing is rounded for the tie margin: another margin, or routing checks added to a config whose
    baseline was recorded without them, is a stale baseline (never a replay without routing)."""
    config, path, root, _ = recorded_moe
    wider = dataclasses.replace(config, precision=dataclasses.replace(config.precision, routing_tie_margin=0.1))
    with pytest.raises(BaselineError, match=r"precision: routing_tie_margin 0.04 -> 0.1"):
        _stale(wider, path, root, "baseline")
    dense = tuple(t for t in config.precision.thresholds if not t.metric.startswith(("routing", "expert")))
    # parallel_layouts on a MoE model captures routing too (capture/taps.py): gone with the routing bounds
    checks = dataclasses.replace(config.precision.checks, parallel_layouts=None)
    unrouted = dataclasses.replace(config, precision=dataclasses.replace(config.precision, thresholds=dense,
                                                                         checks=checks))
    with pytest.raises(BaselineError, match=r"precision: routing_tie_margin gone"):
        _stale(unrouted, path, root, "baseline")


def test_taps_a_baseline_does_not_store_are_refused_with_the_clear_message(recorded, tmp_path):
    """Only routing is stored: another tap (a vision tower's) is refused naming --npuprec-reference live, and
    routing asked of a baseline recorded without it is stale, never an empty pass."""
    config, path, root, _ = recorded
    first = load_reference(root / "tiny-llama", "tiny-llama").prompts[0]
    for taps, message in (({"vision": tmp_path / "v.npz"}, r"tiny-llama: its checks need vision from the reference, "
                                                           r"which baselines do not store yet; run it with "
                                                           r"--npuprec-reference live"),
                          ({"routing": tmp_path / "r.npz"}, r"prompt .*: recorded without its routing")):
        s = bl.open_session(config, bl.BaselineOptions("baseline", root), path, _inputs(config, path))
        with s.reference_factory(lambda: None)() as ref, pytest.raises(BaselineError, match=message):
            ref.score([ScoreRequest(first.scored, first.positions, tmp_path / "x.npy", taps)])


def test_prompts_with_images_or_sounds_are_refused_not_replayed_by_token_ids(recorded, tmp_path):
    """Two prompts of one text with other media have the same ids: a baseline keyed by ids would replay one's rows for
    the other, so media are refused both ways (generate and score) with the way out named."""
    config, path, root, _ = recorded
    first = load_reference(root / "tiny-llama", "tiny-llama").prompts[0]
    message = r"tiny-llama: its prompts carry images or sounds, .* run it with --npuprec-reference live"
    s = bl.open_session(config, bl.BaselineOptions("baseline", root), path, _inputs(config, path))
    with s.reference_factory(lambda: None)() as ref:
        with pytest.raises(BaselineError, match=message):
            ref.score([ScoreRequest(first.scored, first.positions, tmp_path / "x.npy", images=("an image",))])
        with pytest.raises(BaselineError, match=message):
            ref.generate([first.scored], 4, images=[("an image",)])
        assert ref.generate([first.scored[: len(first.scored) - len(first.generated)]], len(first.generated),
                            images=[()]) == [first.generated]


# --- the drift rule, on fabricated records -------------------------------------------------------------------

HW = {"platform": "cpu", "device_name": "Test CPU", "versions": {"vllm": "0.32"}}


def _record_doc(hw=HW, kl=2e-6, cos=0.99999, digest="d"):
    return {"hardware": hw, "inputs_digest": digest, "created": "2026-11-22T00:00:00+00:00",
            "metrics": {"kl_divergence": {"mean": kl}, "cosine_similarity": {"mean": cos}}}


def _judge(metric, today, tolerance=0.5, records=None, digest="d", hw=HW, folder=Path("baselines/m"), **kwargs):
    from pytest_npuprec.baselines.drift import judge_drift
    from pytest_npuprec.config.drift import DriftTolerance

    records = [(Path("cpu-test.json"), _record_doc())] if records is None else records
    return judge_drift(DriftTolerance(metric, tolerance), "m", today, hw, digest, records, folder=folder, **kwargs)


def test_clean_repeat_passes_and_drift_fails():
    assert _judge("kl_divergence", 2e-6).passed
    assert _judge("kl_divergence", 2.9e-6).passed
    v = _judge("kl_divergence", 6e-6)
    assert not v.passed and "worse than recorded by 200%" in v.message and "tolerance 50%" in v.message, v.message
    assert _judge("cosine_similarity", 0.99999).passed
    v = _judge("cosine_similarity", 0.99997)  # 1 - cos: 1e-5 -> 3e-5
    assert not v.passed and "worse than recorded by 200%" in v.message, v.message


def test_nan_today_fails_drift():
    assert not _judge("kl_divergence", float("nan")).passed


def test_much_better_says_consider_updating():
    v = _judge("kl_divergence", 0.5e-6)
    assert v.passed and "better than recorded by 75%: consider updating (pytest -m npu --model m " \
                        "--npuprec-update-baselines)" in v.message, v.message


def test_floor_keeps_a_zero_record_from_tripping():
    records = [(Path("r.json"), _record_doc(kl=0.0))]
    assert _judge("kl_divergence", 1.2e-8, records=records).passed
    assert not _judge("kl_divergence", 1e-7, records=records).passed


def test_other_hardware_is_listed_not_compared():
    other = dict(HW, device_name="Ascend910B2", platform="npu")
    v = _judge("kl_divergence", 1.0, records=[(Path("npu.json"), _record_doc(hw=other))])
    assert v.outcome == "skipped" and not v.passed and not v.failed, v.message
    assert "skipped (not compared: no device record for cpu Test CPU under baselines/m/device" in v.message
    assert "records for other hardware, listed not compared: npu Ascend910B2 (mean 2e-06)" in v.message


def test_record_of_other_inputs_is_not_compared():
    v = _judge("kl_divergence", 1.0, digest="other")
    assert v.outcome == "skipped" and "made on other inputs" in v.skipped, v.message


def test_a_drift_check_that_compared_nothing_is_skipped_with_its_reason_or_red_when_records_are_required():
    """No baseline folder, no record for this device, a record of other inputs, a device name that could not be
    read: each compared nothing, so none may pass; --npuprec-require-records makes each red."""
    unknown = dict(HW, device_name="unknown npu (RuntimeError)")
    cases = {"no baseline folder is set (--npuprec-baseline-dir)": dict(folder=None),
             "no device record for cpu Test CPU under baselines/m/device": dict(records=[]),
             "the record cpu-test.json was made on other inputs": dict(digest="other"),
             "the device's name could not be read (unknown npu (RuntimeError))": dict(hw=unknown)}
    for reason, kwargs in cases.items():
        v = _judge("kl_divergence", 2e-6, **kwargs)
        assert v.outcome == "skipped" and v.skipped.startswith(f"not compared: {reason}"), (reason, v.message)
        assert v.as_dict()["skipped"] == v.skipped and v.value == 2e-6  # today's mean is still reported
        red = _judge("kl_divergence", 2e-6, require=True, **kwargs)
        assert red.outcome == "failed" and f"FAILED: not compared: {reason}" in red.message, red.message
        assert "--npuprec-require-records: a check that compared nothing is red" in red.message


@pytest.mark.parametrize("entry, said", [({}, "missing"), ({"mean": None}, "None"), ({"mean": float("nan")}, "nan"),
                                         ({"mean": "2e-6"}, "'2e-6'")])
def test_a_record_without_the_metric_is_red_naming_the_file(entry, said):
    """A device record missing the metric gave NaN, and `bad > nan` is false: the check passed comparing nothing."""
    doc = _record_doc()
    doc["metrics"]["kl_divergence"] = entry
    if not entry:
        del doc["metrics"]["kl_divergence"]
    for today in (2e-6, 1.0):
        v = _judge("kl_divergence", today, records=[(Path("baselines/m/device/cpu-test.json"), doc)])
        assert v.outcome == "failed", v.message
        assert (f"device record baselines/m/device/cpu-test.json: metrics.kl_divergence.mean is {said}; expected the "
                "finite mean") in v.message, v.message
    assert _judge("cosine_similarity", 0.99999, records=[(Path("cpu-test.json"), doc)]).passed  # the other metric


def test_an_unreadable_record_is_red_naming_the_file(tmp_path):
    from pytest_npuprec.baselines.device_records import read_records

    device = tmp_path / "m" / "device"
    device.mkdir(parents=True)
    (device / "cpu-test.json").write_text(json.dumps(_record_doc()))
    (device / "cpu-half.json").write_text('{"hardware": {"platform": "cpu"')  # cut off mid-write by hand
    (device / "cpu-list.json").write_text("[]")
    records, broken = read_records(tmp_path / "m")
    assert [p.name for p, _ in records] == ["cpu-test.json"]
    assert [p.name for p, _ in broken] == ["cpu-half.json", "cpu-list.json"]
    v = _judge("kl_divergence", 2e-6, records=records, broken=broken, folder=tmp_path / "m")
    assert v.outcome == "failed", v.message
    assert f"device record {device / 'cpu-half.json'} cannot be read (JSONDecodeError: " in v.message, v.message
    assert f"device record {device / 'cpu-list.json'} cannot be read (ValueError: expected a JSON object" in v.message


def test_drift_config(tmp_path):
    base = (CONFIGS / "tiny-llama.yaml").read_text().split("  drift:")[0]
    path = tmp_path / "m.yaml"
    path.write_text(base + "  drift:\n    kl_divergence: 50%\n    relative_l2: 0.25\n")
    config = load_config(path)
    assert [(d.metric, d.tolerance) for d in config.precision.drift] == [("kl_divergence", 0.5), ("relative_l2", 0.25)]
    assert config.check_ids[-2:] == ("drift-kl_divergence", "drift-relative_l2")
    for bad, message in (("kl_divergence: -5%", "precision.drift.kl_divergence: expected a tolerance above 0"),
                         ("kl_divergence: lots", "precision.drift.kl_divergence: expected a tolerance above 0"),
                         ("perplexity: 5%", "precision.drift.perplexity: unknown key"),
                         ("routing_agreement: 5%", "precision.drift.routing_agreement: unknown key")):
        path.write_text(base + f"  drift:\n    {bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)


# --- options ---------------------------------------------------------------------------------------------------

def test_reference_option_is_validated_when_parsed(pytester):
    result = pytester.runpytest("--npuprec-reference", "recorded", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--npuprec-reference: invalid choice: 'recorded' (choose from *auto*live*baseline*"])


def test_update_with_a_baseline_reference_is_a_usage_error(pytester):
    result = pytester.runpytest("--npuprec-update-baselines", "--npuprec-reference", "baseline", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--npuprec-update-baselines records the live reference; it cannot run with "
                                 "--npuprec-reference baseline*"])


def test_require_records_with_an_update_is_a_usage_error(pytester):
    result = pytester.runpytest("--npuprec-update-baselines", "--npuprec-require-records", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--npuprec-require-records makes a drift check without a device record red; it "
                                 "cannot run with --npuprec-update-baselines*"])
    assert pytester.runpytest("--npuprec-require-records", "--collect-only").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_baseline_dir_default_and_env(pytester, monkeypatch, tmp_path):
    from pytest_npuprec import options

    config = pytester.parseconfig()
    assert options.baseline_dir(config) == config.rootpath / "baselines"
    monkeypatch.setenv("NPUPREC_BASELINE_DIR", str(tmp_path))
    assert options.baseline_dir(config) == tmp_path
    config = pytester.parseconfig("--npuprec-baseline-dir", "elsewhere")
    assert options.baseline_dir(config) == (pytester.path / "elsewhere").resolve()
