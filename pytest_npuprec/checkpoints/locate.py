"""Where a model's checkpoint is: a built-in stand-in, or real weights under --model-root."""
from __future__ import annotations

from pathlib import Path

from ..config.schema import ModelConfig
from ..env_vars import MODEL_ROOT_ENV
from ..errors import NpuprecError


class WeightsNotFoundError(NpuprecError, FileNotFoundError):
    pass


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def candidate_folders(model_name: str, roots: list[Path]) -> list[Path]:
    """Every folder a checkpoint of `model_name` may sit in, in the order they are tried.

    ModelScope lays out <root>/<org>/<name> (and older versions <org>/<name with dots as ___>),
    Hugging Face caches <root>/models--<org>--<name>/snapshots/<rev>/, and people often keep
    <root>/<name>.
    """
    direct = Path(model_name).expanduser()
    out = [direct] if direct.is_absolute() else []
    last = model_name.rsplit("/", 1)[-1]
    for root in roots:
        out += [root / model_name, root / last, root / model_name.replace(".", "___")]
        hf = root / f"models--{model_name.replace('/', '--')}" / "snapshots"
        snapshots = sorted(hf.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True) if hf.is_dir() else []
        out += snapshots or [hf / "<revision>"]
    return list(dict.fromkeys(out))


def locate_weights(config: ModelConfig, model_roots: list[Path]) -> Path:
    if config.stand_in:
        from ..standins import ensure_standin

        return ensure_standin(config.stand_in)
    candidates = candidate_folders(config.model_name, model_roots)
    for folder in candidates:
        if _is_checkpoint(folder):
            return folder
    roots = ", ".join(str(r) for r in model_roots) or f"none given (--model-root or ${MODEL_ROOT_ENV})"
    looked = "\n  ".join(str(c) for c in candidates) or "(nowhere: no model root)"
    raise WeightsNotFoundError(
        f"model {config.name} ({config.model_name}): no checkpoint (a folder with config.json) found. "
        f"Model roots: {roots}. Looked in:\n  {looked}\n"
        f"Download the weights (e.g. modelscope download --model {config.model_name} --local_dir "
        f"<root>/{config.model_name}) and pass --model-root <root>.")
