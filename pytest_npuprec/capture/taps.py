"""Which taps (TAPS.md) a model's scoring captures: decided from its checkpoint's config.json and the checks
its YAML sets, never from a flag."""
from __future__ import annotations

import json
from pathlib import Path

from ..config.schema import ModelConfig
from ..errors import NpuprecError
from ..metrics.registry import ROUTING_METRICS

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
    """("routing",) when the config bounds routing metrics (the model must then be MoE), else ()."""
    routing = sorted({t.metric for t in config.thresholds if t.metric in ROUTING_METRICS})
    if not routing:
        return ()
    if not routed_experts(model_path):
        raise NpuprecError(f"{config.path}: precision.thresholds bounds {', '.join(routing)}, but "
                           f"{Path(model_path) / 'config.json'} declares no routed experts (none of "
                           f"{', '.join(_EXPERT_KEYS)}); routing checks exist only for MoE models")
    return ("routing",)


def supported_taps(model_path: Path) -> tuple[str, ...]:
    """Every tap the checkpoint has, whatever its config checks (--npuprec-calibrate measures each metric the model
    has): "routing" for a MoE model."""
    return ("routing",) if routed_experts(model_path) else ()
