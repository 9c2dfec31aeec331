"""The reference: transformers in float32 on the CPU, the full-precision baseline."""
from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import decoding, reference_media
from .reference_taps import REFERENCE_TAPS
from .scoring import ScoreRequest


class TransformersRunner:
    """Start with `with TransformersRunner(...) as ref:`; verbs: generate, score."""

    side = "reference"
    one_at_a_time = True  # generate and score loop over prompts one by one (progress.py draws a bar over them)

    def __init__(self, model_path: Path, trust_remote_code: bool = False, dtype: str = "float32"):
        self.model_path = Path(model_path)
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype
        self.model: Any = None
        self.processor: Any = None  # an image or audio model's processor (reference_media.py)
        self.info: dict[str, Any] = {}
        self._eos: frozenset[int] = frozenset()

    def __enter__(self) -> "TransformersRunner":
        import torch
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        if reference_media.is_multimodal(self.model_path):
            self.model, self.processor = reference_media.load_model_and_processor(
                self.model_path, getattr(torch, self.dtype), self.trust_remote_code)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(
                str(self.model_path), dtype=getattr(torch, self.dtype), trust_remote_code=self.trust_remote_code,
            ).eval()
        self.info = {"platform": "cpu", "dtype": self.dtype, "model_class": type(self.model).__name__,
                     "threads": torch.get_num_threads(), "start_s": round(time.perf_counter() - started, 2)}
        self._eos = decoding.eos_ids(self.model.generation_config.eos_token_id, self._tokenizer_eos())
        return self

    def _tokenizer_eos(self) -> int | None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError):
            return None  # a checkpoint without a tokenizer: its prompts came as token ids
        return tokenizer.eos_token_id

    def __exit__(self, *exc: object) -> None:
        self.model = self.processor = None
        gc.collect()

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int,
                 images: Sequence[tuple[Any, ...]] | None = None) -> list[tuple[int, ...]]:
        """Greedy continuations by decoding.RULE, one prompt at a time (no padding to perturb the reference): the
        argmax of the model's own logits at each step, with its KV cache; the checkpoint's generation_config
        settings (repetition penalty, n-gram bans, bad words, forced tokens...) are not applied. A prompt's images
        enter the first forward pass (reference_media.py)."""
        return [self._greedy(prompt, max_tokens, images[k] if images else ()) for k, prompt in enumerate(prompts)]

    def _greedy(self, prompt: Sequence[int], max_tokens: int, images: tuple[Any, ...] = ()) -> tuple[int, ...]:
        import torch

        out: list[int] = []
        ids, cache = torch.tensor([list(prompt)], dtype=torch.long), None
        extra = reference_media.media_inputs(self.model, self.processor, ids, images)
        with torch.inference_mode():
            while len(out) < max_tokens:
                result = self._last_logits(ids, cache, extra)
                token = int(torch.argmax(result.logits[0, -1]))
                out.append(token)
                if token in self._eos:
                    break
                ids, cache, extra = torch.tensor([[token]], dtype=torch.long), result.past_key_values, {}
        return tuple(out)

    def _last_logits(self, ids: Any, cache: Any, extra: dict[str, Any]) -> Any:
        try:
            return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **extra)
        except TypeError:  # remote code without logits_to_keep
            return self.model(input_ids=ids, past_key_values=cache, use_cache=True, **extra)

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
        vision = reference_media.media_inputs(self.model, self.processor, ids, request.images)
        taps = {name: REFERENCE_TAPS[name] for name in request.taps}
        extra = {k: v for tap in taps.values() for k, v in tap.forward_kwargs().items()}
        with torch.inference_mode(), contextlib.ExitStack() as hooks:
            for tap in taps.values():
                if hasattr(tap, "recording"):
                    hooks.enter_context(tap.recording(self.model))
            try:
                output = self.model(input_ids=ids, logits_to_keep=keep, **vision, **extra)
                logits = output.logits[0]
                if logits.shape[0] != len(keep):  # a forward that takes logits_to_keep into **kwargs, unused
                    logits = logits.index_select(0, keep)  # (Qwen2-Audio): every row came back
            except TypeError:  # remote code without logits_to_keep: compute all, keep the rows asked for
                output = self.model(input_ids=ids, **vision, **extra)
                logits = output.logits[0].index_select(0, keep)
            for name, tap in taps.items():
                tap.write(self.model, output, keep, request.taps[name])
        np.save(request.out, logits.float().numpy())
