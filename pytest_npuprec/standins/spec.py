"""What a stand-in builder spec is, and its key: the one module every builder and the cache share.

A spec provides ``name``, ``description``, ``key_material() -> dict`` (everything that determines
the checkpoint apart from BUILDER_VERSION) and ``build(out_dir, *required_dirs) -> dict`` (writes
the checkpoint files except the manifest into the existing folder ``out_dir`` and returns facts
for the manifest). A spec built from other stand-ins names their specs in ``requires`` (objects,
not names; default none): the cache builds those first and passes their folders to ``build`` in
that order, and their keys belong in the spec's key material. A spec trained on text provides
``training_pieces() -> list[tuple[str, ...]]`` (its training documents in build order, each as the
pieces the build tokenizes apart): a stand-in's length prompts are cut from them (capture/lengths.py;
without it, from the corpus' prose documents).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

# Bump when the build procedure changes in a way key_material() does not see.
BUILDER_VERSION = 1


class StandinSpec(Protocol):
    name: str
    description: str

    def key_material(self) -> dict: ...

    def build(self, out_dir: Path, *required_dirs: Path) -> dict: ...


def requirements(spec: StandinSpec) -> tuple[StandinSpec, ...]:
    """The specs ``spec`` is built from (its ``requires``; none when it has no such attribute)."""
    return tuple(getattr(spec, "requires", ()))


def standin_key(spec: StandinSpec, length: int = 12) -> str:
    """Short hash of everything that determines a stand-in checkpoint."""
    material = {"builder_version": BUILDER_VERSION, "name": spec.name, **spec.key_material()}
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def source_digest(filename: str) -> str:
    """sha256 (16 hex) of one of this package's source files, for key material: a change to a generator of
    training data (synthetic images, sounds) changes the stand-ins trained on it."""
    from importlib import resources

    return hashlib.sha256(resources.files(__package__).joinpath(filename).read_bytes()).hexdigest()[:16]


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
