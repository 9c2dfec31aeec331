"""The reference: transformers in float32 on the CPU, the full-precision baseline."""
from __future__ import annotations

import contextlib
import gc
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .reference_taps import REFERENCE_TAPS
from .scoring import ScoreRequest


class TransformersRunner:
    """Start with `with TransformersRunner(...) as ref:`; verbs: generate, score."""

    side = "reference"

    def __init__(self, model_path: Path, trust_remote_code: bool = False, dtype: str = "float32"):
        self.model_path = Path(model_path)
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype
        self.model: Any = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> "TransformersRunner":
        import torch
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(
            str(self.model_path), dtype=getattr(torch, self.dtype), trust_remote_code=self.trust_remote_code,
        ).eval()
        self.info = {"platform": "cpu", "dtype": self.dtype, "model_class": type(self.model).__name__,
                     "threads": torch.get_num_threads(), "start_s": round(time.perf_counter() - started, 2)}
        return self

    def __exit__(self, *exc: object) -> None:
        self.model = None
        gc.collect()

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[tuple[int, ...]]:
        """Greedy continuations, one prompt at a time (no padding to perturb the reference)."""
        import torch

        out = []
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], dtype=torch.long)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # generation_config sampling defaults vs do_sample=False
                generated = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                do_sample=False, max_new_tokens=max_tokens,
                                                pad_token_id=self._pad_id())
            out.append(tuple(int(t) for t in generated[0, ids.shape[1]:].tolist()))
        return out

    def _pad_id(self) -> int | None:
        cfg = self.model.generation_config
        eos = cfg.eos_token_id
        return cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)

    def score(self, requests: Sequence[ScoreRequest]) -> None:
        """Write the logits at each request's positions of its tokens to its `out` as float32 [P x vocab] (and
        each tap's arrays, reference_taps), one sequence at a time (no padding to perturb the reference)."""
        for request in requests:
            self._score_one(request)

    def _score_one(self, request: ScoreRequest) -> None:
        import torch

        tokens, positions = request.tokens, request.positions
        ids = torch.tensor([list(tokens[: max(positions) + 1])], dtype=torch.long)
        keep = torch.tensor(list(positions), dtype=torch.long)
        taps = {name: REFERENCE_TAPS[name] for name in request.taps}
        extra = {k: v for tap in taps.values() for k, v in tap.forward_kwargs().items()}
        with torch.inference_mode(), contextlib.ExitStack() as hooks:
            for tap in taps.values():
                if hasattr(tap, "recording"):
                    hooks.enter_context(tap.recording(self.model))
            try:
                output = self.model(input_ids=ids, logits_to_keep=keep, **extra)
                logits = output.logits[0]
            except TypeError:  # remote code without logits_to_keep: compute all, keep the rows asked for
                output = self.model(input_ids=ids, **extra)
                logits = output.logits[0].index_select(0, keep)
            for name, tap in taps.items():
                tap.write(self.model, output, keep, request.taps[name])
        np.save(request.out, logits.float().numpy())
