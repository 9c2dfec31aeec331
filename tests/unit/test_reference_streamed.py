"""The layer-streamed FP32 reference (runners/streamed.py) against the in-memory one: the same logits and greedy
tokens on every stand-in architecture, the weights read once per score call, and a model whose FP32 weights
exceed a memory cap referenced within it (reference_cap_child.py, in a subprocess, by its peak resident memory)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

STANDINS = ("tiny-llama", "tiny-Qwen3Guard-Gen-4B", "tiny-BitCPM4-0.5B", "tiny-Nanbeige4-3B-Thinking-2511",
            "tiny-BitCPM4-CANN-1B", "tiny-BitCPM4-CANN-1B-unquantized")
REMOTE_CODE = {"tiny-BitCPM4-0.5B", "tiny-BitCPM4-CANN-1B-unquantized"}
REL_TOL = 1e-6  # per row: max |streamed - in-memory| / max |in-memory|


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all()
    return float((np.abs(a - b).max(axis=1) / np.abs(a).max(axis=1)).max())


def _run(runner, sequences, folder: Path, tag: str):
    from pytest_npuprec.runners.scoring import ScoreRequest

    requests = [ScoreRequest(s, tuple(range(len(s))), folder / f"{tag}-{i}.npy") for i, s in enumerate(sequences)]
    with runner as ref:
        ref.score(requests)
        streamed = getattr(ref, "streamed", None)
        after_score = dict(ref.info, bytes_read=getattr(streamed, "bytes_read", None),
                           row_bytes_read=getattr(streamed, "row_bytes_read", None))
        tokens = ref.generate([sequences[0]], 3)
    return [np.load(r.out) for r in requests], tokens, after_score


def tied(path: Path) -> bool:
    return json.loads((path / "config.json").read_text()).get("tie_word_embeddings", False)


def hidden_of(path: Path) -> int:
    return json.loads((path / "config.json").read_text())["hidden_size"]


@pytest.mark.parametrize("name", STANDINS)
def test_streamed_reference_gives_the_in_memory_logits(name, standin, tmp_path):
    """Llama, Qwen3 (q/k norm, tied embeddings), MiniCPM and the BitCPM QAT remote code: every row within
    1e-6 relative (measured: bitwise equal), the same greedy tokens, and the weights read once for all
    sequences of a score call."""
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.streamed import StreamedRunner

    path, trust = standin(name), name in REMOTE_CODE
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(1)
    sequences = [rng.integers(3, vocab, size=n).tolist() for n in (9, 4, 14)]
    memory, memory_tokens, _ = _run(TransformersRunner(path, trust), sequences, tmp_path, "memory")
    streamed, streamed_tokens, info = _run(StreamedRunner(path, trust), sequences, tmp_path, "streamed")
    assert max(rel_diff(a, b) for a, b in zip(memory, streamed)) <= REL_TOL
    assert streamed_tokens == memory_tokens and len(memory_tokens[0]) >= 1
    assert info["memory"] == "streamed" and info["bytes_read"] == info["pass_bytes"]  # one pass for 3 sequences
    embedding = vocab * hidden_of(path) * 4  # read by rows: only those of the tokens looked up
    assert info["pass_bytes"] == info["fp32_weight_bytes"] - (0 if tied(path) else embedding)
    assert info["row_bytes_read"] == len({t for s in sequences for t in s}) * hidden_of(path) * 4


def test_lockstep_runs_every_sequence_through_a_unit_before_the_next():
    from pytest_npuprec.runners.lockstep import Lockstep

    lockstep, log = Lockstep(), []

    def sequence(i):
        def run():
            for unit in range(3):
                log.append((unit, i, threading.current_thread().name))
                lockstep.after_unit()
            return i
        return run

    assert lockstep.run([sequence(i) for i in range(4)]) == [0, 1, 2, 3]
    assert [(unit, i) for unit, i, _ in log] == [(unit, i) for unit in range(3) for i in range(4)]
    assert len({name for *_, name in log}) == 4


def test_lockstep_hands_a_failure_to_the_caller():
    from pytest_npuprec.runners.lockstep import Lockstep

    lockstep, done = Lockstep(), []

    def ok():
        for _ in range(3):
            lockstep.after_unit()
        done.append("ok")

    def bad():
        lockstep.after_unit()
        raise ValueError("unit 1 broke")

    with pytest.raises(ValueError, match="unit 1 broke"):
        lockstep.run([ok, bad, ok])
    assert done == []  # the others stopped at their next turn


def test_a_parameter_without_a_tensor_is_named(standin, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from pytest_npuprec.runners.layer_stream import StreamError, StreamedModel

    folder = tmp_path / "llama"
    shutil.copytree(standin("tiny-llama"), folder)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StreamError, match=r"model\.norm\.weight"):
        StreamedModel(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(StreamError, match="no model.safetensors"):
        StreamedModel(folder)


def test_auto_streams_only_what_would_not_fit(standin, monkeypatch):
    from pytest_npuprec.runners import reference_memory

    path = standin("tiny-llama")
    weights = reference_memory.fp32_weight_bytes(path)
    assert weights == 7_902_208  # 1,975,552 parameters (2 layers, untied 1024 x 256 embeddings and lm_head)
    monkeypatch.setattr(reference_memory, "available_bytes", lambda: 4 * weights)
    assert reference_memory.choose("auto", path)[0] == "in_memory"
    monkeypatch.setattr(reference_memory, "available_bytes", lambda: weights)
    mode, why = reference_memory.choose("auto", path)
    assert mode == "streamed" and why["fp32_weight_bytes"] == weights
    assert reference_memory.choose("in_memory", path)[0] == "in_memory"
    runner = reference_memory.reference_runner(path, False, "streamed")
    with runner as ref:
        assert ref.info["memory"] == "streamed" and ref.info["reference_memory"] == "streamed"


def _child(mode: str, model: Path, out: Path) -> dict:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("reference_cap_child.py")), mode, str(model),
                           str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(figures, grown=figures["peak_rss_bytes"] - figures["start_rss_bytes"])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS/VmHWM from /proc")
def test_a_model_larger_than_the_memory_cap_is_referenced_within_it(tmp_path):
    """Weights of 267 MB in FP32, a cap of half that on what the process may grow by after start-up (its peak
    resident memory, each reference in a subprocess of its own). The in-memory reference exceeds it (so the cap
    is below the model); the streamed one stays within it, with the in-memory logits."""
    pytest.importorskip("transformers")
    from pytest_npuprec.standins.random_weights import RandomLlama

    spec = RandomLlama(hidden_size=512, intermediate_size=1536, num_hidden_layers=16, vocab_size=16000, kv_heads=2)
    model = spec.write(tmp_path / "model")
    cap = spec.fp32_bytes() // 2
    in_memory = _child("in_memory", model, tmp_path / "memory")
    assert in_memory["grown"] > spec.fp32_bytes() > cap
    streamed = _child("streamed", model, tmp_path / "streamed")
    assert streamed["grown"] <= cap, streamed
    for i in range(2):
        assert rel_diff(np.load(tmp_path / "memory" / f"{i}.npy"), np.load(tmp_path / "streamed" / f"{i}.npy")) <= REL_TOL


@pytest.mark.parametrize("name", ("tiny-Qwen3-30B-A3B", "tiny-ERNIE-4.5-21B-A3B"))
def test_moe_experts_stream_with_their_layer_and_route_the_same(name, standin, tmp_path):
    """The fused experts parameters transformers builds on load (experts.gate_up_proj, experts.down_proj) read
    expert by expert from the checkpoint's per-expert tensors, ERNIE's moe_statics found under transformers' own
    renaming: the same logits and greedy tokens, router logits identical (the routing tap), and the whole MoE
    block (router and every expert) one unit read once for all sequences."""
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest
    from pytest_npuprec.runners.streamed import StreamedRunner

    path = standin(name)
    rng = np.random.default_rng(2)
    sequences = [rng.integers(3, 1000, size=n).tolist() for n in (9, 4, 14)]
    out = {}
    for tag, runner in (("memory", TransformersRunner(path)), ("streamed", StreamedRunner(path))):
        requests = [ScoreRequest(s, tuple(range(len(s))), tmp_path / f"{tag}-{i}.npy",
                                 taps={"routing": tmp_path / f"{tag}-{i}-routing.npz"}) for i, s in enumerate(sequences)]
        with runner as ref:
            ref.score(requests)
            units = [u.label for u in ref.streamed.units] if tag == "streamed" else []
            read, one_pass = (ref.streamed.bytes_read, ref.streamed.pass_bytes()) if tag == "streamed" else (0, 0)
            out[tag] = [np.load(r.out) for r in requests], ref.generate([sequences[0]], 3)
    assert max(rel_diff(a, b) for a, b in zip(out["memory"][0], out["streamed"][0])) <= REL_TOL
    assert out["memory"][1] == out["streamed"][1]
    assert "layer 1.mlp" in units and read == one_pass  # the MoE block whole, read once for the 3 sequences
    for i in range(len(sequences)):
        memory, streamed = (np.load(tmp_path / f"{tag}-{i}-routing.npz") for tag in ("memory", "streamed"))
        assert memory["router_logits"].shape[1] >= 1 and memory.files == streamed.files
        for field in memory.files:
            assert np.array_equal(memory[field], streamed[field]), (name, i, field)


def test_vision_language_model_streams_with_its_images(standin, tmp_path):
    """Qwen3-VL: the vision tower streamed too (its units read per sequence with images, since only those run
    it), sequences with one image, none and two in one call: the in-memory logits and greedy tokens."""
    from pytest_npuprec.capture.multimodal import load_processor
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest
    from pytest_npuprec.runners.streamed import StreamedRunner
    from pytest_npuprec.standins.synthetic import synthetic_image

    path = standin("tiny-Qwen3-VL-8B-Instruct")
    processor = load_processor(path, False)
    images = [(synthetic_image("shapes", (96, 96), 1),), (),
              (synthetic_image("noise", (64, 32), 2), synthetic_image("shapes", (96, 96), 3))]
    sequences = []
    for group in images:
        content = [*({"type": "image"} for _ in group), {"type": "text", "text": "Describe it."}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        sequences.append([int(t) for t in processor(text=[text], images=list(group) or None,
                                                    return_tensors="np")["input_ids"][0]])
    out = {}
    for tag, runner in (("memory", TransformersRunner(path)), ("streamed", StreamedRunner(path))):
        requests = [ScoreRequest(s, tuple(range(len(s))), tmp_path / f"{tag}-{i}.npy", images=group)
                    for i, (s, group) in enumerate(zip(sequences, images))]
        with runner as ref:
            ref.score(requests)
            vision = [u for u in ref.streamed.units if u.alone] if tag == "streamed" else []
            out[tag] = [np.load(r.out) for r in requests], ref.generate([sequences[2]], 3, images=[images[2]])
    assert max(rel_diff(a, b) for a, b in zip(out["memory"][0], out["streamed"][0])) <= REL_TOL
    assert out["memory"][1] == out["streamed"][1]
    assert any("visual.blocks" in u.label for u in vision) and not any("language_model" in u.label for u in vision)


def test_large_linears_apply_block_by_block(standin, tmp_path, monkeypatch):
    """Linears above CHUNK_BYTES (here lowered so tiny-llama's MLP projections and lm_head qualify) are applied a
    block of output rows at a time, each block read once for all sequences: the in-memory logits."""
    from pytest_npuprec.runners import layer_stream
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.streamed import StreamedRunner

    path = standin("tiny-llama")
    monkeypatch.setattr(layer_stream, "CHUNK_BYTES", 300_000)  # lm_head 1 MB -> 4 blocks; gate/up/down 0.7 MB -> 3
    rng = np.random.default_rng(3)
    sequences = [rng.integers(3, 1000, size=n).tolist() for n in (9, 4, 14)]
    memory, memory_tokens, _ = _run(TransformersRunner(path), sequences, tmp_path, "memory")
    runner = StreamedRunner(path)
    streamed, streamed_tokens, info = _run(runner, sequences, tmp_path, "streamed")
    assert max(rel_diff(a, b) for a, b in zip(memory, streamed)) <= REL_TOL
    assert streamed_tokens == memory_tokens
    assert info["bytes_read"] == info["pass_bytes"]  # every block once for the 3 sequences
    with StreamedRunner(path) as ref:
        chunked = {u.label: len(u.blocks) for u in ref.streamed.units if u.kind == "chunks"}
    assert chunked["lm_head"] == 4 and chunked["layer 0.mlp.gate_proj"] == 3, chunked


def test_layers_tap_keeps_each_sequence_its_own_arrays(standin, tmp_path):
    """The diagnosis's layers tap hooks every decoder layer; the streamed reference runs the sequences in threads
    through the same modules, so each hook keeps only its own sequence's outputs: the in-memory arrays, bitwise."""
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest
    from pytest_npuprec.runners.streamed import StreamedRunner

    path = standin("tiny-llama")
    rng = np.random.default_rng(4)
    sequences = [rng.integers(3, 1000, size=n).tolist() for n in (9, 4, 14)]
    for tag, runner in (("memory", TransformersRunner(path)), ("streamed", StreamedRunner(path))):
        with runner as ref:
            ref.score([ScoreRequest(s, tuple(range(len(s))), tmp_path / f"{tag}-{i}.npy",
                                    taps={"layers": tmp_path / f"{tag}-{i}.npz"}) for i, s in enumerate(sequences)])
    for i, sequence in enumerate(sequences):
        memory, streamed = np.load(tmp_path / f"memory-{i}.npz"), np.load(tmp_path / f"streamed-{i}.npz")
        assert memory["output"].shape[1] == len(sequence) and memory.files == streamed.files
        for field in memory.files:
            assert np.array_equal(memory[field], streamed[field]), (i, field)


def test_streamed_generation_stops_at_the_same_end_of_sequence_ids(standin):
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.streamed import StreamedRunner

    path = standin("tiny-Qwen3Guard-Gen-4B")
    with TransformersRunner(path) as memory:
        expected = memory._eos
    with StreamedRunner(path) as streamed:
        assert streamed._eos == expected and expected
