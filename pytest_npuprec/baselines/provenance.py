"""What a reference baseline is valid for, and what changed since it was recorded.

A baseline stands for one FP32 reference run; it is valid while everything that run depended on is
the same: the token ids of every prompt as rendered, the checkpoint's files (weights, config, remote
code, generation config), the tokenizer files, the parts of the config's precision section that shape
the reference (prompts, max_tokens, positions, chat template, perplexity text, enable_thinking, the decoding
rule, and reference_scoring: a baseline of one mode is stale in the other; reference_memory is not, both give
the same logits; when the routing is captured, routing_tie_margin: the compact routing is rounded for it) and
the lm_head tensor the logits are rebuilt from. Thresholds are not part of it: they judge the
reference, they do not produce it. Package versions and the host are recorded for information.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from ..capture.records import PromptInput
from ..capture.taps import model_taps
from ..config.schema import ModelConfig
from ..measure.routing import TAP as ROUTING_TAP
from ..runners import decoding
from .digests import sha256_file

# which files of a checkpoint folder count as what (anything else, e.g. a README, is ignored)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                    "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja",
                    "chat_template.json")
_MODEL_FILES = ("config.json", "generation_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")
# the keys compared to decide validity, in the order changes are named
VALIDITY_KEYS = ("prompts", "precision", "weights", "model_files", "tokenizer", "lm_head")


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checkpoint_files(folder: Path) -> dict[str, dict[str, str]]:
    """sha256 of each file that shapes the reference, grouped: weights, model_files (config, remote code), tokenizer."""
    groups: dict[str, dict[str, str]] = {"weights": {}, "model_files": {}, "tokenizer": {}}
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        name = path.name
        if name.endswith(_WEIGHT_SUFFIXES):
            group = "weights"
        elif name in _TOKENIZER_FILES:
            group = "tokenizer"
        elif name in _MODEL_FILES or name.endswith(".py"):
            group = "model_files"
        else:
            continue
        groups[group][name] = sha256_file(path)
    return groups


def prompt_digests(prompts: Iterable[PromptInput]) -> dict[str, str]:
    """prompt id -> sha256 of its kind and token ids as rendered today."""
    return {p.id: sha256_json({"kind": p.kind, "token_ids": list(p.token_ids),
                               **({"images": list(p.image_digests)} if p.images else {})}) for p in prompts}


def precision_inputs(config: ModelConfig, taps: Iterable[str] = ()) -> dict[str, Any]:
    """The parts of the config that shape the reference (not the thresholds, which only judge it); `taps`: those
    the run captures (capture/taps.py model_taps)."""
    precision = config.precision
    assert precision is not None
    perplexity = precision.checks.perplexity
    return {
        "prompts": [{"id": p.id, "text": p.text,
                     "messages": [[m.role, m.text] for m in p.messages] if p.messages else None,
                     **({"images": [i.label for i in p.all_images]} if p.all_images else {}),
                     **({"audios": [a.label for a in p.all_audios]} if p.all_audios else {})}
                    for p in precision.prompts],
        "max_tokens": precision.max_tokens,
        "positions": precision.positions,
        "chat_template": precision.chat_template,
        "perplexity_text": perplexity.text if perplexity else None,
        "enable_thinking": config.serve.enable_thinking,
        # only when not the default, so that baselines recorded before the key existed stay valid
        **({"reference_scoring": precision.reference_scoring} if precision.reference_scoring != "reference" else {}),
        # only when the reference's routing is captured (the baseline then holds it, compacted for this margin):
        # a dense model's baselines stay valid, and a baseline recorded before routing was captured is stale
        **({"routing_tie_margin": precision.routing_tie_margin} if ROUTING_TAP in taps else {}),
    }


def provenance(config: ModelConfig, model_path: Path, prompts: list[PromptInput],
               lm_head: dict[str, Any]) -> dict[str, Any]:
    """Everything a reference baseline is valid for (VALIDITY_KEYS), for today's inputs."""
    files = checkpoint_files(model_path)
    precision = precision_inputs(config, model_taps(config, model_path))
    if decoding.ignored_settings(model_path):
        # its continuations are greedy by runners/decoding.py, not by what generation_config.json asks; a baseline
        # recorded when the reference still applied those settings lacks this key and is stale (with nothing to
        # ignore, the two rules give the same continuation: those baselines stay valid)
        precision["decoding"] = decoding.RULE
    return {"prompts": prompt_digests(prompts), "precision": precision, **files, "lm_head": lm_head}


def changes(recorded: dict[str, Any], today: dict[str, Any]) -> list[str]:
    """What differs between a baseline's provenance and today's, in words (empty: the baseline is valid)."""
    out = []
    for key in VALIDITY_KEYS:
        old, new = recorded.get(key), today.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            parts = []
            for name in sorted(set(old) | set(new)):
                if name not in new:
                    parts.append(f"{name} gone")
                elif name not in old:
                    parts.append(f"{name} new")
                elif old[name] != new[name]:
                    parts.append(f"{name} {_short(old[name])} -> {_short(new[name])}")
            out.append(f"{key}: {', '.join(parts)}")
        else:
            out.append(f"{key}: {_short(old)} -> {_short(new)}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def inputs_digest(prov: dict[str, Any]) -> str:
    """One hash of what the device ran on (prompts, precision inputs, checkpoint and tokenizer files): a device
    record is compared only with a run on the same inputs."""
    return sha256_json({k: prov.get(k) for k in VALIDITY_KEYS if k != "lm_head"})
