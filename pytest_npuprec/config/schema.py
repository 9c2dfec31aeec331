"""Validated model configs: what one YAML under tests/e2e/models/configs/ holds, as objects.

The YAML is a superset of vllm-ascend's lm_eval configs; only the `precision:` section, the
serve settings, `envs:` and `gate:` are used here; the lm_eval keys (and any top-level key this
suite does not know) are accepted and kept as they are.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .drift import DriftTolerance

FINITE_CHECK = "finite_logits"  # every logit on both sides is finite; always checked
Bound = Literal["min", "max"]
Reduce = Literal["mean", "min", "max"]
PositionsMode = Literal["continuation", "all"]  # "all" adds every prompt position
# whose greedy continuation both sides score: the reference's (it generates), or the device's (one teacher-forced
# reference pass, no reference generation; capture/teacher_forced.py)
ReferenceScoring = Literal["reference", "device"]
# the FP32 reference's weights: all in host memory, streamed a layer at a time from the shards (runners/streamed.py),
# or streamed when they would not fit (runners/reference_memory.py)
ReferenceMemory = Literal["auto", "in_memory", "streamed"]
Phase = Literal["prefill", "decode"]  # teacher-forced scoring rows, or the rows of the device's own decode steps


@dataclass(frozen=True)
class ServeConfig:
    """Engine settings for the device under test (vLLM `LLM(...)` keyword arguments)."""

    dtype: str = "bfloat16"
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    trust_remote_code: bool = False
    enforce_eager: bool = False
    enable_thinking: bool | None = None  # a chat-template switch, not an engine argument
    quantization: str | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enable_expert_parallel: bool | None = None
    seed: int = 0
    # Any other serve key (block_size, additional_config, ...) and serve.engine_kwargs: passed to the
    # engine as they are; checked against the installed vLLM's EngineArgs when the model runs.
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the config's top-level `envs:`, for the device engine only
    # engine keyword -> the YAML key it came from (serve.block_size, serve.engine_kwargs.x), for errors
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "trust_remote_code": self.trust_remote_code,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
        }
        optional = {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "quantization": self.quantization,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_num_seqs": self.max_num_seqs,
            "enable_expert_parallel": self.enable_expert_parallel,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        kwargs.update(self.extra)
        return kwargs


@dataclass(frozen=True)
class ImageSource:
    """One image of a prompt: a file (absolute, resolved against the config's folder) or a seeded synthetic
    image (standins/synthetic.py)."""

    key: str = field(compare=False)  # the YAML key it came from, for errors
    path: Path | None = None
    synthetic: str | None = None
    size: tuple[int, int] | None = None  # (width, height) of a synthetic image
    seed: int = 0

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.path.name
        assert self.size is not None
        return f"{self.synthetic} {self.size[0]}x{self.size[1]} seed {self.seed}"


@dataclass(frozen=True)
class AudioSource:
    """One sound of a prompt: a WAV file (absolute, resolved against the config's folder) or a seeded synthetic
    waveform (standins/synthetic_audio.py)."""

    key: str = field(compare=False)  # the YAML key it came from, for errors
    path: Path | None = None
    synthetic: str | None = None
    seconds: float = 1.0  # of a synthetic sound
    sample_rate: int = 16000  # of a synthetic sound
    seed: int = 0

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.path.name
        return f"{self.synthetic} {self.seconds:g} s {self.sample_rate} Hz seed {self.seed}"


@dataclass(frozen=True)
class ContentPart:
    """One part of a chat message's content list: `{type: text, text: ...}`, `{type: image, image: ...}` or
    `{type: audio, audio: ...}`."""

    type: Literal["text", "image", "audio"]
    text: str | None = None
    image: ImageSource | None = None
    audio: AudioSource | None = None


@dataclass(frozen=True)
class Message:
    role: str
    content: str | tuple[ContentPart, ...]

    @property
    def text(self) -> str:
        """The content as text, each image as [image]."""
        if isinstance(self.content, str):
            return self.content
        return " ".join(p.text if p.type == "text" else f"[{p.type}]" for p in self.content
                        if p.text or p.image or p.audio)

    def template_content(self) -> Any:
        """The content as chat templates take it: a string, or a list of {type, text} / {type: image|audio} parts."""
        if isinstance(self.content, str):
            return self.content
        return [{"type": "text", "text": p.text} if p.type == "text" else {"type": p.type} for p in self.content]


@dataclass(frozen=True)
class Prompt:
    """One prompt: plain text, or chat messages rendered with the model's chat template. A text prompt with
    `images` is rendered as one user message: the images, then the text."""

    id: str
    text: str | None = None
    messages: tuple[Message, ...] | None = None
    images: tuple[ImageSource, ...] = ()
    audios: tuple[AudioSource, ...] = ()  # rendered before the images (Qwen-Omni's order: audio, image, text)

    @property
    def label(self) -> str:
        """Short human-readable form for tables."""
        if self.text is not None:
            return "[audio] " * len(self.audios) + "[image] " * len(self.images) + self.text
        assert self.messages is not None
        return " / ".join(m.text for m in self.messages if m.role == "user")

    @property
    def all_images(self) -> tuple[ImageSource, ...]:
        """Every image of the prompt in the order the rendered prompt holds them."""
        if self.messages is None:
            return self.images
        return tuple(p.image for m in self.messages if not isinstance(m.content, str) for p in m.content
                     if p.image is not None)

    @property
    def all_audios(self) -> tuple[AudioSource, ...]:
        """Every sound of the prompt in the order the rendered prompt holds them."""
        if self.messages is None:
            return self.audios
        return tuple(p.audio for m in self.messages if not isinstance(m.content, str) for p in m.content
                     if p.audio is not None)


@dataclass(frozen=True)
class Threshold:
    """One bound on one metric, reduced over prompts and positions."""

    metric: str
    bound: Bound
    value: float
    reduce: Reduce
    id: str  # unique within the model: the metric name, plus the reduction if the metric has several
    phase: Phase = "prefill"  # decode: judged on the decode-step rows (its id ends in -decode)

    @property
    def op(self) -> str:
        """The bound as an operator: ">=" for a min bound, "<=" for a max bound (written nowhere else)."""
        return ">=" if self.bound == "min" else "<="

    def holds(self, value):
        """value (a number or an array of them) meets the bound; NaN never does."""
        return value >= self.value if self.bound == "min" else value <= self.value

    def condition(self, subject: str | None = None) -> str:
        """The bound in words: "<subject> >= 0.999"; the subject defaults to "<reduce> <metric>"."""
        return f"{subject or f'{self.reduce} {self.metric}'} {self.op} {self.value:g}"


@dataclass(frozen=True)
class DeterminismCheck:
    """`runs` device runs at temperature 0: identical greedy tokens, logits within `max_abs_diff`."""

    runs: int = 2
    max_abs_diff: float = 0.0  # 0 = bitwise identical

    @property
    def logits_bound(self) -> Threshold:
        """The bound on each run's logits max |diff| against run 1."""
        return Threshold("max_abs_diff", "max", self.max_abs_diff, "max", id="determinism")


@dataclass(frozen=True)
class PerplexityCheck:
    """Perplexity of a fixed text on both sides; the device/reference ratio must lie in [1/r, r]."""

    text: str
    max_ratio: float


@dataclass(frozen=True)
class LabelCheck:
    """A regex pulls a label out of each greedy output; the device label must equal the reference's."""

    pattern: str  # its groups joined by "/" (or the whole match, without groups) are the label
    prompts: tuple[str, ...] | None = None  # prompt ids; None = every prompt


@dataclass(frozen=True)
class ThinkingCheck:
    """Thinking sections in greedy chat outputs: as serve.enable_thinking asks, the same on both sides."""

    open: str = "<think>"
    close: str = "</think>"
    prompts: tuple[str, ...] | None = None  # prompt ids; None = every prompt given as messages
    compare_answer: bool = True  # the text after the thinking section must agree too


@dataclass(frozen=True)
class TernaryWeightsCheck:
    """Every matching weight of the checkpoint on disk is scale x {-1, 0, 1} per group."""

    group_size: int = -1  # input elements per group; -1 = the whole tensor
    include: str = r"(q|k|v|o|gate|up|down)_proj\.weight$"  # regex over tensor names
    exclude: str | None = None


@dataclass(frozen=True)
class QatEquivalenceCheck:
    """QAT checkpoint (fake quantizer in forward) vs its converted form, both FP32 on the CPU.

    The converted checkpoint is then what the device comparison runs."""

    converter: str | tuple[str, ...]  # "module:function" or a command with {input} {output} {group_size}
    thresholds: tuple[Threshold, ...]
    group_size: int = -1


@dataclass(frozen=True)
class StepAgreementCheck:
    """The device's step logits of one generation against another's (capture/steps.py), over the rows
    computed from the same tokens: max |diff| within `max_abs_diff` (0 = bitwise)."""

    max_abs_diff: float = 0.0

    @property
    def logits_bound(self) -> Threshold:
        return Threshold("max_abs_diff", "max", self.max_abs_diff, "max", id="steps")


class BatchInvarianceCheck(StepAgreementCheck):
    """Each prompt alone and the batch reversed, against the full batch."""


class GraphModeCheck(StepAgreementCheck):
    """A second engine with serve.enforce_eager flipped, against the first."""


@dataclass(frozen=True)
class PrefixCacheCheck:
    """Prompts sharing a long prefix, scored cold and then warm (the prefix's KV blocks reused from the cache, the
    prefill computing only the rest): warm vs cold within `max_abs_diff`, warm vs reference within `thresholds`
    (default: the model's per-position thresholds)."""

    prefix_tokens: int = 512  # the shared prefix, cut from `prefix` (repeated as needed)
    prefix: str | None = None  # None: capture/lengths.FIXED_TEXT
    prompts: tuple[str, ...] | None = None  # prompt ids whose tokens follow the prefix; None = every prompt
    max_abs_diff: float | None = None  # None: the model's max_abs_diff threshold (its calibrated BF16 floor)
    # warm vs reference: the model's thresholds, those of the metrics named here replaced (config/prefix_cache.py)
    thresholds: tuple[Threshold, ...] | None = None

    @property
    def warm_bound(self) -> Threshold:
        assert self.max_abs_diff is not None
        return Threshold("max_abs_diff", "max", self.max_abs_diff, "max", id="prefix_cache")


LAYOUT_KEYS = ("tensor_parallel_size", "enable_expert_parallel")  # the serve keys a parallel layout may set


@dataclass(frozen=True)
class ParallelLayout:
    """One more parallel layout of the device: the configured serve settings with these (LAYOUT_KEYS) replaced."""

    settings: tuple[tuple[str, Any], ...]  # (serve key, value), in the YAML's order
    key: str = field(default="", compare=False)  # the YAML key it came from, for messages

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.settings)

    def serve(self, serve: ServeConfig) -> ServeConfig:
        return dataclasses.replace(serve, **dict(self.settings))


def layout_label(serve: ServeConfig) -> str:
    """The configured layout in the words of ParallelLayout.label."""
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                     for k in LAYOUT_KEYS if (v := getattr(serve, k)) is not None)


@dataclass(frozen=True)
class ParallelLayoutsCheck:
    """The device against itself under other parallel layouts (TP=1 vs 2, expert parallel off vs on): the same
    greedy tokens except ties, the same routing except near-ties, logits within `thresholds` (each layout vs the
    configured one and vs the reference; default: the model's thresholds, those named here replaced)."""

    layouts: tuple[ParallelLayout, ...]
    thresholds: tuple[Threshold, ...] | None = None


@dataclass(frozen=True)
class ChecksConfig:
    """Check kinds beyond metric thresholds; each one set is one more check of the model."""

    determinism: DeterminismCheck | None = None
    perplexity: PerplexityCheck | None = None
    labels: LabelCheck | None = None
    thinking: ThinkingCheck | None = None
    ternary_weights: TernaryWeightsCheck | None = None
    qat_equivalence: QatEquivalenceCheck | None = None
    batch_invariance: BatchInvarianceCheck | None = None
    graph_mode: GraphModeCheck | None = None
    prefix_cache: PrefixCacheCheck | None = None
    parallel_layouts: ParallelLayoutsCheck | None = None

    def enabled(self) -> tuple[str, ...]:
        """The check ids, in a fixed order."""
        return tuple(name for name in CHECK_KINDS if getattr(self, name) is not None)


CHECK_KINDS = ("qat_equivalence", "ternary_weights", "determinism", "perplexity", "labels", "thinking",
               "batch_invariance", "graph_mode", "prefix_cache", "parallel_layouts")


@dataclass(frozen=True)
class LengthText:
    """precision.length_text: the text the length prompts are cut from (repeated as needed)."""

    text: str
    source: str  # the file's name, or "precision.length_text.text": what the prompt labels name


@dataclass(frozen=True)
class PrecisionConfig:
    prompts: tuple[Prompt, ...]
    max_tokens: int
    thresholds: tuple[Threshold, ...]
    positions: PositionsMode = "continuation"
    chat_template: bool = False  # render plain-text prompts as a single user message too
    tie_margin: float | None = None  # logit gap that counts as a BF16 tie; None = one BF16 ulp
    # router-logit gap under which a differing expert choice counts as a BF16 tie (measure/routing.py)
    routing_tie_margin: float | None = None
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    # bound on each engine phase, or {start, call}; --npuprec-timeout overrides it
    timeout_s: float | dict[str, float] | None = None
    drift: tuple[DriftTolerance, ...] = ()  # drift-<metric> checks against the device record (baselines/drift.py)
    # bounds on the decode-step rows (config/decode.py): the `phase: decode` ones, else the prefill bounds
    decode_thresholds: tuple[Threshold, ...] = ()
    lengths: tuple[int, ...] = ()  # precision.lengths: prompts len-<n> of exactly n tokens (capture/lengths.py)
    reference_scoring: ReferenceScoring = "reference"
    reference_memory: ReferenceMemory = "auto"
    # cut from this text; None: a stand-in's training stream, or capture/lengths.py's fixed text for real models
    length_text: LengthText | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str  # the config's file stem: what --model selects
    path: Path
    model_name: str  # as published, e.g. Qwen/Qwen3Guard-Gen-4B
    serve: ServeConfig
    precision: PrecisionConfig | None
    stand_in: str | None = None  # name of a built-in tiny checkpoint instead of real weights
    hardware: str | None = None
    lm_eval: dict[str, Any] = field(default_factory=dict)  # vllm-ascend's keys, untouched
    system_prompt: str | None = None  # vllm-ascend's reward-model key; kept, not used by the comparison
    gate_paths: tuple[str, ...] = ()  # gate.paths: globs of source paths whose change selects this model
    unknown: dict[str, Any] = field(default_factory=dict)  # top-level keys this suite does not know, kept

    @property
    def envs(self) -> dict[str, str]:
        """The config's `envs:`, applied to the device engine's environment."""
        return self.serve.env

    @property
    def thresholds(self) -> tuple[Threshold, ...]:
        return self.precision.thresholds if self.precision else ()

    @property
    def decode_thresholds(self) -> tuple[Threshold, ...]:
        return self.precision.decode_thresholds if self.precision else ()

    @property
    def checks(self) -> ChecksConfig:
        return self.precision.checks if self.precision else ChecksConfig()

    @property
    def check_ids(self) -> tuple[str, ...]:
        """Every check of this model, in report order: one test each."""
        ids = [FINITE_CHECK, *(t.id for t in self.thresholds), *(t.id for t in self.decode_thresholds)]
        for kind in self.checks.enabled():
            if kind == "qat_equivalence":
                assert self.checks.qat_equivalence is not None
                ids.extend(f"{kind}-{t.id}" for t in self.checks.qat_equivalence.thresholds)
            else:
                ids.append(kind)
        ids.extend(d.id for d in (self.precision.drift if self.precision else ()))
        return tuple(ids)
