"""Worker side: the logits of every step of the device's own generation, taken at `compute_logits`.

vLLM V1's model runner (and vllm-ascend's, `model_runner_v1.py`) turns the sampled hidden states into
logits with `self.model.compute_logits(hidden_states[logits_indices])` right after the forward pass,
outside any captured graph (ACL graphs, CUDA graphs, torch.compile). Wrapping that method on the
model instance therefore sees the logits the sampler sees, at prefill and at every decode step, in
eager and in graph mode alike.

Row i of such a call belongs to `input_batch.req_ids[i]` (one sampled row per request without
speculative decoding); its position is `num_computed_tokens + num_scheduled_tokens - 1`, the
scheduled count read from the runner's `query_start_loc`. Rows are kept per request and position
and written as one float32 .npy per request; only paths cross the process boundary.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..atomic import atomic_file

# device faults that live in compute_logits (vllm_worker.FAULTS maps them here; defaults in fault_names.py)
STEP_FAULTS = ("decode_only", "batch_only", "graph_only")


class StepCapture:
    """Installed once per worker; armed around a generate call; collected per request afterwards."""

    def __init__(self, model: Any, runner: Any):
        self.runner = runner
        self.original = model.compute_logits  # the teacher-forced scoring hook calls this one
        self.armed = False
        self.rows: dict[str, dict[int, Any]] = {}  # internal request id -> position -> logits row
        self.prompt_len: dict[str, int] = {}
        self.problem: str | None = None  # a call whose rows could not be mapped to requests
        self.faults: list[Callable[[Any, list[bool]], Any]] = []  # (logits, is_decode per row) -> logits
        model.compute_logits = self._compute_logits

    def _compute_logits(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        logits = self.original(hidden_states, *args, **kwargs)
        if logits is None or not (self.armed or self.faults):
            return logits
        mapped = self._map_rows(logits.shape[0])
        if mapped is None:
            return logits
        req_ids, positions, prompt_lens = mapped
        if self.faults:
            decode = [p >= n for p, n in zip(positions, prompt_lens)]
            for fault in self.faults:
                logits = fault(logits, decode)
        if self.armed:
            kept = logits.detach().float().cpu()
            for row, (rid, pos, n) in enumerate(zip(req_ids, positions, prompt_lens)):
                self.prompt_len[rid] = n
                if pos >= n - 1:  # a chunk of a chunked prefill samples a row too; vLLM discards it, so do we
                    self.rows.setdefault(rid, {})[pos] = kept[row].clone()
        return logits

    def _map_rows(self, n_rows: int) -> tuple[list[str], list[int], list[int]] | None:
        try:
            batch, qsl = persistent_batch(self.runner)
        except RuntimeError as exc:
            self.problem = str(exc)
            return None
        req_ids = list(batch.req_ids)
        if len(req_ids) != n_rows:
            # vLLM's prompt-logprobs path and speculative decoding call compute_logits with other rows
            if self.armed:
                self.problem = (f"compute_logits got {n_rows} rows for {len(req_ids)} requests "
                                "(speculative decoding or prompt logprobs?)")
            return None
        scheduled = np.diff(qsl[: n_rows + 1])
        computed = batch.num_computed_tokens_cpu[:n_rows]
        positions = [int(c + s - 1) for c, s in zip(computed, scheduled)]
        prompt_lens = [int(n) for n in batch.num_prompt_tokens[:n_rows]]
        return req_ids, positions, prompt_lens

    def arm(self) -> None:
        self.armed, self.rows, self.prompt_len, self.problem = True, {}, {}, None

    def collect(self, paths: dict[str, str], write: bool) -> dict[str, Any]:
        """Write each request's rows (position order, contiguous from its last prompt position) to
        paths[external request id]. Returns {external id: {"first": position, "rows": n}} or a problem."""
        self.armed = False
        rows, prompt_len, problem = self.rows, self.prompt_len, self.problem
        self.rows, self.prompt_len = {}, {}
        if problem:
            return {"problem": problem}
        by_external = {_external_id(rid, paths): rid for rid in rows}
        out: dict[str, Any] = {}
        for external, path in paths.items():
            rid = by_external.get(external)
            if rid is None:
                return {"problem": f"no compute_logits row was seen for request {external!r}"}
            kept = rows[rid]
            first = prompt_len[rid] - 1
            positions = sorted(kept)
            if positions != list(range(first, first + len(positions))):
                return {"problem": f"request {external!r}: rows at positions {positions[:8]}..., expected "
                                   f"contiguous positions from {first} (prefix caching or chunked prefill?)"}
            if write:
                import torch

                with atomic_file(path, "wb") as f:
                    np.save(f, torch.stack([kept[p] for p in positions]).numpy())
            out[external] = {"first": first, "rows": len(positions)}
        return {"requests": out}


def persistent_batch(runner: Any) -> tuple[Any, Any]:
    """The model runner's `input_batch` and `query_start_loc` (numpy): request i of the running step is
    `input_batch.req_ids[i]`, its tokens rows qsl[i]:qsl[i + 1] (vLLM V1 and vllm-ascend's runners)."""
    batch = getattr(runner, "input_batch", None)
    qsl = getattr(getattr(runner, "query_start_loc", None), "np", None)
    if batch is None or qsl is None:
        raise RuntimeError("the model runner has no input_batch / query_start_loc (not vLLM V1?)")
    return batch, qsl


def token_indices(runner: Any, n_rows: int) -> Any:
    """Each row's token index within its request for the running step (numpy int64 [n_rows]): the request's
    computed tokens so far plus the row's offset in its query span (how vLLM V1 numbers positions)."""
    import numpy as np

    batch, qsl = persistent_batch(runner)
    out = np.zeros(n_rows, dtype=np.int64)
    for i in range(len(batch.req_ids)):
        start, end = int(qsl[i]), min(int(qsl[i + 1]), n_rows)
        out[start:end] = int(batch.num_computed_tokens_cpu[i]) + np.arange(end - start)
    return out


def _external_id(internal: str, paths: dict[str, str]) -> str | None:
    """vLLM appends '-<8 hex>' to the id the caller gave (input_processor); vllm-ascend may not."""
    if internal in paths:
        return internal
    head = internal.rpartition("-")[0]
    return head if head in paths else None


def _lowered_non_top(logits: Any, rows: list[bool], magnitude: float) -> Any:
    """Every logit of the selected rows except the row's top one is lowered by magnitude x |z| (z a fixed
    normal vector over the vocabulary): greedy tokens survive, the distribution does not."""
    import torch

    if not any(rows):
        return logits
    generator = torch.Generator().manual_seed(1234)
    z = torch.randn(logits.shape[-1], generator=generator).abs().to(logits.device)
    out = logits.clone()
    for i, selected in enumerate(rows):
        if selected:
            row = out[i].float()
            shift = magnitude * z * (row.abs().mean() + 1e-6)
            shift[row.argmax()] = 0
            out[i] = (row - shift).to(out.dtype)
    return out


def decode_only(capture: StepCapture, magnitude: float) -> str:
    """An error confined to decode steps (graph-mode decode with a stale slot_mapping, an attention workspace
    shared across layers): only the rows of decode steps are wrong; prefill and teacher-forced scoring are not."""
    capture.faults.append(lambda logits, decode: _lowered_non_top(logits, decode, magnitude))
    return f"decode steps only: every logit but the top one lowered by {magnitude:g} x |z| x mean|logit|"


def batch_only(capture: StepCapture, magnitude: float) -> str:
    """State that leaks between requests (an attention-mask cache corrupted in place): a step computing
    more than one request is wrong in every row; a request alone is right."""
    capture.faults.append(lambda logits, decode: _lowered_non_top(logits, [len(decode) > 1] * len(decode),
                                                                  magnitude))
    return f"batches of > 1 request only: every logit but the top one lowered by {magnitude:g} x |z| x mean|logit|"


def graph_only(capture: StepCapture, magnitude: float) -> str:
    """A bug of graph mode alone (a captured decode graph replaying a stale slot_mapping, vllm-ascend #3482): the
    decode rows of an engine that runs compiled (ACL / CUDA graphs, torch.compile) are wrong; the same
    engine with enforce_eager is right, so an eager device passes everything but `graph_mode`."""
    model_config = getattr(capture.runner, "model_config", None)
    if model_config is None:
        raise RuntimeError("graph_only fault: the model runner has no model_config (not vLLM V1?)")
    if model_config.enforce_eager:
        return "graph mode only: this engine runs eager, nothing injected"
    capture.faults.append(lambda logits, decode: _lowered_non_top(logits, decode, magnitude))
    return f"graph mode only (this engine is compiled): decode-step logits but the top one lowered by {magnitude:g} " \
           "x |z| x mean|logit|"
