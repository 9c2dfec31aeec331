"""Stand-in checkpoints: the ones shipped with the package, else a build-once, reuse-forever cache.

The package ships every stand-in, built once, under ``standins/shipped/<name>/`` (with the manifest
naming the builder key it was made for): a build is deterministic on one machine but not across
CPUs (another MKL / ATen code path rounds differently, and a near-tie in training flips), so the
same bytes everywhere are the only way every machine tests the same model. A shipped folder whose
key is not the builder's current key is stale and never used: the stand-in is then built into the
cache (and ``python -m pytest_npuprec.standins.ship`` refreshes the shipped copy).
``$NPUPREC_STANDINS=build`` skips the shipped copies (to test a machine's own build).

Cache layout: ``<cache_root>/standins/<name>-<key>/``.  A folder counts as
complete only if its manifest (written last, before the folder is renamed
into place) matches the key and the model file's size and sha256.  Builds
happen in a temp folder next to the target under an exclusive file lock
(fcntl where available) and are published with ``os.replace``
(``pytest_npuprec.atomic.staged_dir``), so a concurrent pytest process either
waits and reuses the result or, without locking, loses a harmless rename race.
The stand-ins a spec ``requires`` are built first, into the same cache (a build
derives only from builds, never from a shipped copy), and their folders are
handed to its ``build``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..atomic import atomic_write_text, staged_dir
from ..env_vars import STANDINS_SOURCE_ENV, cache_root, temporary_env
from .registry import get_spec
from .spec import BUILDER_VERSION, StandinSpec, requirements, standin_key

log = logging.getLogger("pytest_npuprec.standins")

MANIFEST_NAME = "npuprec_manifest.json"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SHIPPED_ROOT = Path(__file__).with_name("shipped")
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) whose sha256 matched this process


def standin_dir(name: str, cache_dir: Path | str | None = None) -> Path:
    """Where ``name`` lives (or would live) in the cache; does not build."""
    return _build_dir(get_spec(name), _root(cache_dir))


def _root(cache_dir: Path | str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root()


def _build_dir(spec: StandinSpec, root: Path) -> Path:
    return root / "standins" / f"{spec.name}-{standin_key(spec)}"


def shipped_dir(name: str) -> Path:
    """Where the package ships ``name`` (whether or not it is there and current)."""
    get_spec(name)
    return SHIPPED_ROOT / name


def use_shipped() -> bool:
    """False when ``$NPUPREC_STANDINS`` is ``build`` (test this machine's own builds)."""
    value = os.environ.get(STANDINS_SOURCE_ENV, "shipped")
    if value not in ("shipped", "build"):
        raise ValueError(f"${STANDINS_SOURCE_ENV}={value!r}: expected 'shipped' (default) or 'build'")
    return value == "shipped"


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(path: Path, key: str) -> bool:
    """True if ``path`` is a finished checkpoint for ``key`` (manifest + files + model hash)."""
    path = Path(path)
    man = read_manifest(path)
    if not man or man.get("key") != key or man.get("builder_version") != BUILDER_VERSION:
        return False
    if not all((path / f).is_file() for f in REQUIRED_FILES):
        return False
    model = path / "model.safetensors"
    st = model.stat()
    if st.st_size != man.get("model_bytes"):
        return False
    token = (str(model), st.st_size, st.st_mtime_ns)
    if token not in _verified:
        if _sha256(model) != man.get("model_sha256"):
            return False
        _verified.add(token)
    return True


def ensure_standin(name: str, cache_dir: Path | str | None = None) -> Path:
    """Return the checkpoint folder of stand-in ``name``: the shipped one when it is current,
    else the cached build (building it on first use).

    ``cache_dir`` asks for a build: the shipped copy is skipped and the folder goes to
    ``<cache_dir>/standins/<name>-<key>/`` (in place of :func:`cache_root`).  Raises
    UnknownStandinError (a KeyError) for names not in STANDINS.
    """
    spec = get_spec(name)
    key = standin_key(spec)
    if cache_dir is None and use_shipped():
        shipped = shipped_dir(name)
        if is_complete(shipped, key):
            return shipped
        if shipped.is_dir():
            log.warning("shipped stand-in %r is stale (made for another builder key than %s): building it; "
                        "`python -m pytest_npuprec.standins.ship %s` refreshes the shipped copy", name, key, name)
    return _ensure_built(spec, _root(cache_dir))


def _ensure_built(spec: StandinSpec, root: Path) -> Path:
    """The build of ``spec`` in the cache ``root``, made on first use after the stand-ins it requires."""
    key = standin_key(spec)
    final = _build_dir(spec, root)
    if is_complete(final, key):
        return final
    required = [_ensure_built(dep, root) for dep in requirements(spec)]
    base = final.parent
    base.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(base / f".{final.name}.lock") as locked:
        if is_complete(final, key):  # another process built it while we waited
            return final
        _remove_stale(base, final, temps=locked)
        with staged_dir(final, existing="keep") as tmp:
            _build_into(spec, key, tmp, required)
        if not is_complete(final, key):  # lost a rename race (no fcntl) to something that is not a build
            raise FileExistsError(f"{final} appeared while stand-in {spec.name!r} was built and is not a "
                                  f"complete build of it")
    return final


def _build_into(spec: StandinSpec, key: str, out_dir: Path, required: list[Path]) -> None:
    import safetensors
    import tokenizers
    import torch
    import transformers

    log.warning("building stand-in model %r (first use; takes about a minute) into %s", spec.name, out_dir)
    t0 = time.perf_counter()
    with temporary_env({"TOKENIZERS_PARALLELISM": "false"}):
        facts = spec.build(out_dir, *required)
    model = out_dir / "model.safetensors"
    manifest = {
        "name": spec.name,
        "description": spec.description,
        "builder_version": BUILDER_VERSION,
        "key": key,
        "key_material": spec.key_material(),
        "model_sha256": _sha256(model),
        "model_bytes": model.stat().st_size,
        "files_sha256": {f: _sha256(out_dir / f) for f in REQUIRED_FILES},
        **facts,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
        },
        "built_at_unix": int(time.time()),
    }
    # the manifest is what marks the folder complete: write it last, atomically
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    log.warning("built stand-in %r in %.1f s (sha256 %s)", spec.name, manifest["build_seconds"], manifest["model_sha256"][:16])


def _remove_stale(base: Path, final: Path, temps: bool) -> None:
    """Drop an incomplete target (nobody ever writes into it in place) and, when
    we hold the lock (so no live builder of this key exists), temp folders of
    dead builders."""
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    if temps:
        for p in base.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path):
    try:
        import fcntl
    except ImportError:  # no POSIX locks: rely on the os.replace race handling
        yield False
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
