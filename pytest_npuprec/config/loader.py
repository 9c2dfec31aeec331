"""YAML -> validated ModelConfig. Every error names the file, the key and what was expected."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, get_args

import yaml

from .checks import parse_checks
from .decode import decode_thresholds
from .drift import parse_drift
from .audios import parse_audios
from .images import check_image_limit, parse_content, parse_images
from .layouts import settle_parallel_layouts
from .lengths import check_lengths_fit, parse_length_text, parse_lengths
from .prefix_cache import settle_prefix_cache
from .reader import ConfigError, Reader
from .schema import Message, ModelConfig, PrecisionConfig, Prompt, ReferenceMemory, ReferenceScoring, ServeConfig
from .thresholds import parse_thresholds

__all__ = ["ConfigError", "discover_configs", "load_config", "select_configs"]


# vllm-ascend's lm_eval keys: accepted and kept, not used by the precision suite.
LM_EVAL_KEYS = frozenset({
    "model_type", "model", "runner", "tasks", "num_fewshot", "limit", "batch_size",
    "apply_chat_template", "fewshot_as_multiturn", "language", "normalizer",
})

# serve keys with a known type; any other serve key is an engine argument passed through as it is
# (checked against the installed vLLM's EngineArgs when the model runs, see engine_args.py).
_SERVE_TYPES: dict[str, tuple[type, ...]] = {
    "dtype": (str,),
    "max_model_len": (int,),
    "tensor_parallel_size": (int,),
    "gpu_memory_utilization": (float, int),
    "trust_remote_code": (bool,),
    "enforce_eager": (bool,),
    "enable_thinking": (bool,),
    "quantization": (str,),
    "max_num_batched_tokens": (int,),
    "max_num_seqs": (int,),
    "enable_expert_parallel": (bool,),
    "seed": (int,),
    "engine_kwargs": (dict,),
    "block_size": (int,),
    "additional_config": (dict,),
}
_SERVE_FIELDS = frozenset(_SERVE_TYPES) - {"engine_kwargs", "block_size", "additional_config"}
_POSITIVE_SERVE_INTS = ("max_model_len", "tensor_parallel_size", "max_num_batched_tokens", "max_num_seqs",
                        "block_size")
# Older vllm-ascend configs put some serve settings at the top level.
_LEGACY_SERVE_KEYS = frozenset(_SERVE_FIELDS) - {"seed"}
_TOP_KEYS = frozenset({"model_name", "hardware", "serve", "precision", "stand_in", "envs", "system_prompt", "gate"})
KNOWN_TOP_KEYS = _TOP_KEYS | LM_EVAL_KEYS | _LEGACY_SERVE_KEYS
_PRECISION_KEYS = frozenset({"prompts", "max_tokens", "thresholds", "positions", "chat_template", "tie_margin",
                             "routing_tie_margin", "checks", "timeout_s", "drift", "decode", "lengths",
                             "reference_scoring", "reference_memory", "length_text"})
_POSITIONS = ("continuation", "all")
_ROLES = ("system", "user", "assistant")
_DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float", "bf16", "fp16")


def load_config(path: Path | str, text: str | None = None, require_thresholds: bool = True) -> ModelConfig:
    """Validate one YAML (`text`: its content, when not yet written to `path`). Top-level keys the suite does not
    know are kept in `ModelConfig.unknown` (vllm-ascend's schema grows); `precision:`, `gate:` and the typed serve
    keys are strict. `require_thresholds=False` (calibration, which writes them): precision.thresholds may be
    missing."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8") if text is None else text)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"not valid YAML: {exc}") from None
    r = Reader(path)
    if raw is None:
        raise r.fail("", "the file is empty; expected a mapping with at least model_name")
    r.typed(raw, "", dict)
    if "model_name" not in raw:
        raise r.fail("model_name", "missing; expected the model's published name, e.g. Qwen/Qwen3-8B")
    model_name = r.typed(raw["model_name"], "model_name", str)
    optional = {key: r.typed(raw[key], key, str) for key in ("stand_in", "hardware", "system_prompt")
                if raw.get(key) is not None}
    serve = _serve(r, raw)
    precision = _precision(r, raw["precision"], require_thresholds) if "precision" in raw else None
    if precision is not None:
        check_lengths_fit(r, precision.lengths, precision.max_tokens, serve.max_model_len)
        precision = settle_prefix_cache(r, precision, serve)
        precision = settle_parallel_layouts(r, precision, serve)
        check_image_limit(r, precision.prompts, serve.extra)
    return ModelConfig(
        name=path.stem,
        path=path,
        model_name=model_name,
        serve=serve,
        precision=precision,
        lm_eval={k: v for k, v in raw.items() if k in LM_EVAL_KEYS},
        gate_paths=_gate(r, raw.get("gate")),
        unknown={str(k): v for k, v in raw.items() if k not in KNOWN_TOP_KEYS},
        **optional,
    )


def _serve(r: Reader, raw: dict[str, Any]) -> ServeConfig:
    serve = dict(r.typed(raw.get("serve") or {}, "serve", dict))
    for key in _LEGACY_SERVE_KEYS & raw.keys():
        if key in serve and serve[key] != raw[key]:
            raise r.fail(key, f"set both at the top level ({raw[key]!r}) and under serve ({serve[key]!r}); "
                              "expected it in one place")
        serve.setdefault(key, raw[key])
    for key, value in serve.items():
        r.typed(key, "serve", str)
        if value is not None and key in _SERVE_TYPES:
            r.typed(value, f"serve.{key}", *_SERVE_TYPES[key])
    if "dtype" in serve:
        r.choice(serve["dtype"], "serve.dtype", _DTYPES)
    for key in _POSITIVE_SERVE_INTS:
        if serve.get(key) is not None:
            r.positive_int(serve[key], f"serve.{key}")
    gmu = serve.get("gpu_memory_utilization")
    if gmu is not None and not 0 < gmu <= 1:
        raise r.fail("serve.gpu_memory_utilization", f"expected a fraction in (0, 1], got {gmu}")
    fields = {k: v for k, v in serve.items() if k in _SERVE_FIELDS and v is not None}
    passthrough = {k: v for k, v in serve.items() if k not in _SERVE_FIELDS and k != "engine_kwargs"}
    sources = {k: f"serve.{k}" for k in (*fields, *passthrough)}
    engine_kwargs = serve.get("engine_kwargs") or {}
    for key in engine_kwargs:
        if key in passthrough or key in fields:
            raise r.fail(f"serve.engine_kwargs.{key}", f"also set as serve.{key}; expected it in one place")
        sources[key] = f"serve.engine_kwargs.{key}"
    return ServeConfig(**fields, extra={**passthrough, **engine_kwargs}, env=_envs(r, raw.get("envs")),
                       sources=sources)


def _envs(r: Reader, raw: Any) -> dict[str, str]:
    """envs: {NAME: value}: set in the device engine's environment. Values are strings (numbers are taken
    as written); a bare true/false is refused, since an environment variable has no boolean."""
    if raw is None:
        return {}
    r.typed(raw, "envs", dict)
    env = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name or "=" in name:
            raise r.fail("envs", f"{name!r} is not an environment variable name")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise r.fail(f"envs.{name}", f"expected a string (quote it, e.g. \"{str(value).lower()}\"), "
                                         f"got {type(value).__name__} {value!r}")
        env[name] = str(value)
    return env


def _gate(r: Reader, raw: Any) -> tuple[str, ...]:
    """gate: {paths: [glob, ...]}: a change to a matching path selects this model under --npuprec-changed-files."""
    if raw is None:
        return ()
    r.mapping(raw, "gate", frozenset({"paths"}))
    paths = r.typed(raw.get("paths", []), "gate.paths", list)
    for i, glob in enumerate(paths):
        r.typed(glob, f"gate.paths[{i}]", str)
        if not glob.strip():
            raise r.fail(f"gate.paths[{i}]", "empty; expected a glob like vllm_ascend/models/qwen3*.py")
    return tuple(p.strip() for p in paths)


def _precision(r: Reader, raw: Any, require_thresholds: bool = True) -> PrecisionConfig:
    r.mapping(raw, "precision", _PRECISION_KEYS)
    for key in ("prompts", "max_tokens", "thresholds") if require_thresholds else ("prompts", "max_tokens"):
        if key not in raw:
            raise r.fail(f"precision.{key}", "missing; expected prompts, max_tokens and thresholds"
                         + (" (--npuprec-calibrate measures the noise floor and writes them)"
                            if key == "thresholds" else ""))
    tie_margin, routing_tie_margin = (_margin(r, raw, key) for key in ("tie_margin", "routing_tie_margin"))
    prompts = _prompts(r, raw["prompts"])
    thresholds = parse_thresholds(r, raw["thresholds"], phases=True) if "thresholds" in raw else ()
    decode = r.typed(raw.get("decode", True), "precision.decode", bool)
    if not decode and any(t.phase == "decode" for t in thresholds):
        raise r.fail("precision.decode", "false, but precision.thresholds has phase: decode bounds; "
                                         "expected decode: true (the default) or no decode bounds")
    lengths = parse_lengths(r, raw.get("lengths"), prompts)
    return PrecisionConfig(
        prompts=prompts,
        max_tokens=r.positive_int(raw["max_tokens"], "precision.max_tokens"),
        thresholds=tuple(t for t in thresholds if t.phase == "prefill"),
        decode_thresholds=decode_thresholds(thresholds, decode),
        lengths=lengths,
        length_text=parse_length_text(r, raw.get("length_text"), lengths),
        positions=r.choice(raw.get("positions", "continuation"), "precision.positions", _POSITIONS),
        chat_template=r.typed(raw.get("chat_template", False), "precision.chat_template", bool),
        tie_margin=tie_margin,
        routing_tie_margin=routing_tie_margin,
        checks=parse_checks(r, raw.get("checks"), prompts),
        timeout_s=_timeout(r, raw.get("timeout_s")),
        drift=parse_drift(r, raw.get("drift")),
        reference_scoring=r.choice(raw.get("reference_scoring", "reference"), "precision.reference_scoring",
                                   get_args(ReferenceScoring)),
        reference_memory=r.choice(raw.get("reference_memory", "auto"), "precision.reference_memory",
                                  get_args(ReferenceMemory)),
    )


def _margin(r: Reader, raw: Any, key: str) -> float | None:
    """precision.tie_margin (next-token logits) or routing_tie_margin (router logits): a gap >= 0 or absent."""
    value = raw.get(key)
    if value is not None:
        r.typed(value, f"precision.{key}", float, int)
        if not value >= 0:
            raise r.fail(f"precision.{key}", f"expected a logit gap >= 0, got {value}")
    return value


def _timeout(r: Reader, raw: Any) -> float | dict[str, float] | None:
    """A number (every engine phase) or {start: S, call: S}."""
    from ..runners.watchdog import TIMEOUT_KEYS  # light: psutil only

    if raw is None:
        return None
    if isinstance(raw, dict):
        r.mapping(raw, "precision.timeout_s", frozenset(TIMEOUT_KEYS))
        if not raw:
            raise r.fail("precision.timeout_s", "empty; expected start and/or call (seconds)")
        return {key: _seconds(r, seconds, f"precision.timeout_s.{key}") for key, seconds in raw.items()}
    return _seconds(r, raw, "precision.timeout_s")


def _seconds(r: Reader, raw: Any, key: str) -> float:
    value = r.typed(raw, key, float, int)
    if not 0 < value < float("inf"):
        raise r.fail(key, f"expected a positive number of seconds, got {raw!r}")
    return float(value)


def _prompts(r: Reader, raw: Any) -> tuple[Prompt, ...]:
    r.typed(raw, "precision.prompts", list)
    if not raw:
        raise r.fail("precision.prompts", "empty; expected at least one prompt")
    prompts = []
    for i, item in enumerate(raw):
        key = f"precision.prompts[{i}]"
        default_id = f"p{i + 1}"
        if isinstance(item, str):
            prompts.append(_nonempty_text(r, Prompt(id=default_id, text=item), key))
            continue
        r.mapping(item, key, frozenset({"id", "text", "messages", "images", "audios"}))
        pid = str(r.typed(item.get("id", default_id), f"{key}.id", str, int))
        if ("text" in item) == ("messages" in item):
            raise r.fail(key, "expected exactly one of `text` or `messages`")
        if "images" in item and "text" not in item:
            raise r.fail(f"{key}.images", f"(prompt {pid!r}) goes with `text:`; in `messages` put the images in "
                                          "the content list as {type: image, image: ...} parts")
        if "audios" in item and "text" not in item:
            raise r.fail(f"{key}.audios", f"(prompt {pid!r}) goes with `text:`; in `messages` put the sounds in "
                                          "the content list as {type: audio, audio: ...} parts")
        if "text" in item:
            images = parse_images(r, item["images"], f"{key}.images", pid) if "images" in item else ()
            audios = parse_audios(r, item["audios"], f"{key}.audios", pid) if "audios" in item else ()
            prompts.append(_nonempty_text(r, Prompt(id=pid, text=r.typed(item["text"], f"{key}.text", str),
                                                    images=images, audios=audios), key))
            continue
        messages = r.typed(item["messages"], f"{key}.messages", list)
        if not messages:
            raise r.fail(f"{key}.messages", "empty; expected at least one message")
        parsed = []
        for j, m in enumerate(messages):
            mkey = f"{key}.messages[{j}]"
            r.mapping(m, mkey, frozenset({"role", "content"}))
            for field_name in ("role", "content"):
                if field_name not in m:
                    raise r.fail(f"{mkey}.{field_name}", "missing; expected role and content")
            parsed.append(Message(role=r.choice(m["role"], f"{mkey}.role", _ROLES),
                                  content=parse_content(r, m["content"], f"{mkey}.content", pid)))
        prompts.append(Prompt(id=pid, messages=tuple(parsed)))
    ids = [p.id for p in prompts]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate is not None:
        raise r.fail("precision.prompts", f"prompt id {duplicate!r} is used twice; expected unique ids")
    return tuple(prompts)


def _nonempty_text(r: Reader, prompt: Prompt, key: str) -> Prompt:
    if not (prompt.text or "").strip():
        raise r.fail(key, "empty prompt text; expected some text")
    return prompt


def discover_configs(config_dir: Path) -> dict[str, Path]:
    """Config name (file stem) -> path, for every YAML in the folder."""
    if not config_dir.is_dir():
        raise ConfigError(config_dir, "", "config folder not found; expected a folder of <model>.yaml files")
    return {p.stem: p for p in sorted(config_dir.glob("*.y*ml")) if p.suffix in (".yaml", ".yml")}


def select_configs(config_dir: Path, requested: list[str],
                   load: Callable[[Path], ModelConfig] = load_config) -> list[ModelConfig]:
    """Resolve --model values (config stems, published names or their last part; `all`) to configs."""
    available = discover_configs(config_dir)
    if "all" in requested:
        configs = [load(p) for p in available.values()]
        return [c for c in configs if c.precision is not None]
    selected: list[ModelConfig] = []
    for name in requested:
        if name in available:
            config = load(available[name])
        else:
            config = _by_model_name(name, available, load)
        if config.precision is None:
            raise ConfigError(config.path, "precision", f"--model {name}: this config has no precision section; "
                                                        "expected prompts, max_tokens and thresholds under precision:")
        if config.name not in {c.name for c in selected}:
            selected.append(config)
    return selected


def _by_model_name(name: str, available: dict[str, Path], load: Callable[[Path], ModelConfig]) -> ModelConfig:
    for path in available.values():
        config = load(path)
        if name in (config.model_name, config.model_name.rsplit("/", 1)[-1]):
            return config
    known = ", ".join(available) or "(none)"
    raise ConfigError(next(iter(available.values()), Path(".")).parent, "",
                      f"--model {name}: no config with that name or model_name; known: {known}")
