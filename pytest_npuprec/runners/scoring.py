"""What a runner's `score` verb takes: sequences to run teacher-forced, and which rows of each to keep."""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence

# the SamplingParams.extra_args key that tells the worker (vllm_worker.py) which request of a scoring batch it sees
SCORE_KEY = "npuprec_score"


class ScoreRequest(NamedTuple):
    """Run `tokens` through the model; write the logits at `positions` to `out` as float32 [P x vocab]
    (position p predicts tokens[p + 1]). `taps`: tap name -> .npz path for that tap's arrays at the same positions
    (TAPS.md; e.g. "routing": the experts each MoE layer chose)."""

    tokens: Sequence[int]
    positions: Sequence[int]
    out: Path
    taps: Mapping[str, Path] = MappingProxyType({})
    images: tuple[Any, ...] = ()  # PIL images of the sequence's image placeholders, in order
