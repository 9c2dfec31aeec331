"""Which configs of the config folder a session runs: --model names, `all`, and the PR gate.

A config is looked at raw here (parsed YAML, not validated): an invalid config must still be
selectable, so that it becomes one red item for its model instead of stopping every model.

PR gating (--npuprec-changed-files): a changed path selects a model when it is the model's config
file, or when it matches one of the config's `gate.paths` globs. Globs are matched against the path
as `git diff --name-only` prints it (relative to the repository root, `/`-separated) with fnmatch
rules, where `*` also matches `/`.
"""
from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import NpuprecError

CONFIG_SUFFIXES = (".yaml", ".yml")


class SelectionError(NpuprecError):
    """A --model name that names no config, or a config folder that is not there."""


@dataclass(frozen=True)
class Entry:
    """One YAML of the config folder, parsed but not validated."""

    name: str  # file stem
    path: Path
    raw: Any  # the parsed YAML, or None when it does not parse

    @property
    def model_name(self) -> str | None:
        value = self.raw.get("model_name") if isinstance(self.raw, dict) else None
        return value if isinstance(value, str) else None

    @property
    def has_precision(self) -> bool:
        """A precision config, or one that cannot be read (so `--model all` shows it red, not nothing)."""
        return not isinstance(self.raw, dict) or "precision" in self.raw


@dataclass
class Selection:
    config_dir: Path
    names: list[str]  # config stems to collect, in request order
    explicit: bool  # the user named models (or asked for a PR gate)
    changed: list[str] | None = None  # --npuprec-changed-files, as given
    gated_out: list[str] = field(default_factory=list)  # candidates the change does not touch
    visited: bool = False  # pytest walked the config folder (set by the collector)


def scan(config_dir: Path) -> dict[str, Entry]:
    """Config stem -> Entry for every YAML directly in the folder."""
    if not config_dir.is_dir():
        return {}
    entries = {}
    for path in sorted(config_dir.iterdir()):
        if path.suffix in CONFIG_SUFFIXES and path.is_file():
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                raw = None
            entries[path.stem] = Entry(path.stem, path, raw)
    return entries


def resolve(entries: dict[str, Entry], requested: list[str], config_dir: Path, explicit: bool,
            require_configs: bool | None = None) -> list[str]:
    """--model values -> config stems. A name is a stem, a model_name or its last part; `all` is every
    precision config. An unknown name is an error when the user gave it, nothing when it is the default.
    `require_configs` (default: `explicit`): an empty or missing config folder is an error."""
    if (explicit if require_configs is None else require_configs) and not entries:
        raise SelectionError(f"{config_dir}: no <model>.yaml configs there (the config folder: "
                             "--npuprec-config-dir or ini npuprec_config_dir)")
    selected: list[str] = []
    for name in requested:
        if name == "all":
            found = [e.name for e in entries.values() if e.has_precision]
        elif name in entries:
            found = [name]
        else:
            found = [e.name for e in entries.values()
                     if e.model_name and name in (e.model_name, e.model_name.rsplit("/", 1)[-1])][:1]
        if not found and explicit and name == "all":
            raise SelectionError(f"--model all: none of the {len(entries)} configs in {config_dir} has a precision "
                                 "section; expected prompts, max_tokens and thresholds under precision:")
        if not found and explicit:
            raise SelectionError(f"--model {name}: no config in {config_dir} with that file name or model_name; "
                                 f"known: {', '.join(entries) or '(none)'}")
        selected.extend(n for n in found if n not in selected)
    return selected


def read_changed_files(source: str, stdin: Any = None) -> list[str]:
    """The paths listed in `source` (a file, or `-` for stdin), one a line; blanks and # lines skipped."""
    text = (stdin or sys.stdin).read() if source == "-" else Path(source).expanduser().read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _normal(path: str) -> str:
    p = path.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def gate_paths(entry: Entry) -> tuple[str, ...]:
    """The config's validated gate.paths; none when the config is invalid (then only its own change selects it)."""
    from .config.loader import ConfigError, load_config

    try:
        return load_config(entry.path).gate_paths
    except ConfigError:
        return ()


def affected(entry: Entry, changed: list[str], bases: list[Path]) -> bool:
    """Does the change touch this model: its config file, or a path matching its gate.paths?"""
    config_file = entry.path.resolve()
    for path in changed:
        if any((base / path).resolve() == config_file for base in bases):
            return True
    globs = gate_paths(entry)
    return any(fnmatch.fnmatchcase(_normal(path), _normal(glob)) or
               (glob.endswith("/") and _normal(path).startswith(_normal(glob)))
               for path in changed for glob in globs)


def gate(entries: dict[str, Entry], names: list[str], changed: list[str], bases: list[Path]) -> tuple[list[str], list[str]]:
    """(names the change touches, names it does not)."""
    kept = [n for n in names if affected(entries[n], changed, bases)]
    return kept, [n for n in names if n not in kept]

