"""The FP32 reference with bounded host memory: the in-memory runner's verbs over a layer-streamed model
(layer_stream.py). Scoring runs every sequence through each unit before the next is read (lockstep.py), so the
weights are read once per score call; generation reads them once per generated token (prefer
precision.reference_scoring: device, which generates nothing on the reference)."""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Sequence

from ..capture.multimodal import load_processor
from . import decoding, reference_media
from .layer_stream import StreamedModel
from .lockstep import Lockstep
from .reference import TransformersRunner
from .scoring import ScoreRequest


class StreamedRunner(TransformersRunner):
    """`with StreamedRunner(path) as ref:`; verbs: generate, score (the same numbers as TransformersRunner)."""

    one_at_a_time = False  # one read of the weights serves every sequence of a call: never split into calls

    def __init__(self, model_path: Path, trust_remote_code: bool = False):
        super().__init__(model_path, trust_remote_code, dtype="float32")
        self.streamed: StreamedModel | None = None
        self._lockstep = Lockstep()
        self._unhook: Any = None

    def __enter__(self) -> "StreamedRunner":
        import torch

        started = time.perf_counter()
        self.streamed = StreamedModel(self.model_path, self.trust_remote_code, pace=self._lockstep)
        self.model = self.streamed.model
        if reference_media.is_multimodal(self.model_path):
            self.processor = load_processor(self.model_path, self.trust_remote_code)
        self._unhook = self.streamed.attach()
        self._eos = decoding.eos_ids(self.model.generation_config.eos_token_id, self._tokenizer_eos())
        self.info = {"platform": "cpu", "dtype": "float32", "model_class": type(self.model).__name__,
                     "threads": torch.get_num_threads(), "memory": "streamed", "units": len(self.streamed.units),
                     "fp32_weight_bytes": self.streamed.fp32_bytes(), "pass_bytes": self.streamed.pass_bytes(),
                     "start_s": round(time.perf_counter() - started, 2)}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._unhook is not None:
            self._unhook()
        if self.streamed is not None:
            self.info.update(bytes_read=self.streamed.bytes_read, row_bytes_read=self.streamed.row_bytes_read)
        self.streamed, self.model, self._unhook = None, None, None
        gc.collect()

    def score(self, requests: Sequence[ScoreRequest]) -> None:
        """All sequences in one pass over the weights, each computed alone (as the in-memory runner does)."""
        assert self.streamed is not None
        self.streamed.reset()
        try:
            self._lockstep.run([lambda r=request: self._score_one(r) for request in requests])
        finally:
            self.streamed.reset()

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, **media: Any) -> list[tuple[int, ...]]:
        try:
            return super().generate(prompts, max_tokens, **media)
        finally:
            assert self.streamed is not None
            self.streamed.reset()
