"""Which taps (TAPS.md) a model's scoring captures: decided from its checkpoint's config.json and the checks
its YAML sets, never from a flag."""
from __future__ import annotations

import json
from pathlib import Path

from ..config.schema import ModelConfig
from ..errors import NpuprecError
from ..metrics.registry import ROUTING_METRICS, VISION_METRICS
from .multimodal import image_token_id

# config.json keys that count a model's routed experts, across MoE families (Qwen-MoE, Mixtral, DeepSeek, ERNIE)
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def routed_experts(model_path: Path) -> int:
    """The number of routed experts config.json declares (0: not a MoE model)."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    for section in (cfg, cfg.get("text_config") or {}):
        for key in _EXPERT_KEYS:
            value = section.get(key)
            if isinstance(value, list):
                value = max(value, default=0)
            if isinstance(value, int) and value > 1:
                return value
    return 0


def model_taps(config: ModelConfig, model_path: Path) -> tuple[str, ...]:
    """The taps the config's checks need: "routing" (routing metrics, the model must be MoE; or a parallel_layouts
    check on a MoE model: routing is half of what a layout changes), "vision" (vision / M-RoPE metrics; the model
    must take images)."""
    return _routing(config, model_path) + _vision(config, model_path)


def _routing(config: ModelConfig, model_path: Path) -> tuple[str, ...]:
    routing = sorted({t.metric for t in config.thresholds if t.metric in ROUTING_METRICS})
    if not routing:
        return ("routing",) if config.checks.parallel_layouts and routed_experts(model_path) else ()
    if not routed_experts(model_path):
        raise NpuprecError(f"{config.path}: precision.thresholds bounds {', '.join(routing)}, but "
                           f"{Path(model_path) / 'config.json'} declares no routed experts (none of "
                           f"{', '.join(_EXPERT_KEYS)}); routing checks exist only for MoE models")
    return ("routing",)


def _vision(config: ModelConfig, model_path: Path) -> tuple[str, ...]:
    vision = sorted({t.metric for t in config.thresholds if t.metric in VISION_METRICS})
    if not vision:
        return ()
    if image_token_id(model_path) is None:
        raise NpuprecError(f"{config.path}: precision.thresholds bounds {', '.join(vision)}, but "
                           f"{Path(model_path) / 'config.json'} declares no vision tower (no vision_config / "
                           "image_token_id); vision checks exist only for vision-language models")
    return ("vision",)


def supported_taps(model_path: Path) -> tuple[str, ...]:
    """Every tap the checkpoint has, whatever its config checks (--npuprec-calibrate measures each metric the model
    has): "routing" for a MoE model, "vision" for one that takes images."""
    routing = ("routing",) if routed_experts(model_path) else ()
    return routing + (("vision",) if image_token_id(model_path) is not None else ())
