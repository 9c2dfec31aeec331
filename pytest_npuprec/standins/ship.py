"""Build stand-ins afresh and ship them with the package (``standins/shipped/<name>/``), or check
that the shipped ones are still what the builder makes.

    python -m pytest_npuprec.standins.ship                 # rebuild and replace every stand-in
    python -m pytest_npuprec.standins.ship tiny-llama      # just these
    python -m pytest_npuprec.standins.ship --check         # exit 1 naming each stale or missing one

Run it after changing a builder (its key changes), then commit ``pytest_npuprec/standins/shipped/``.
The stand-ins are built in one fresh temporary cache (dependencies too: the converted BitCPM rebuilds
its QAT source); each then replaces its shipped folder in one rename (``pytest_npuprec.atomic``), so an
interrupted run leaves the old copy whole.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from ..atomic import staged_dir
from .cache import SHIPPED_ROOT, ensure_standin, is_complete, read_manifest, shipped_dir
from .registry import STANDINS, get_spec
from .spec import standin_key


def stale_shipped(names: list[str] | None = None) -> list[str]:
    """One sentence per stand-in whose shipped copy is missing, incomplete or made for another key."""
    problems = []
    for name in names or list(STANDINS):
        key = standin_key(get_spec(name))
        folder = shipped_dir(name)
        if is_complete(folder, key):
            continue
        made_for = (read_manifest(folder) or {}).get("key")
        why = (f"was made for builder key {made_for}, the builder now makes {key}" if made_for and made_for != key
               else "is missing or incomplete (files or sha256 do not match its manifest)")
        problems.append(f"shipped stand-in {name} ({folder}) {why}: run "
                        f"`python -m pytest_npuprec.standins.ship {name}` and commit {folder}")
    return problems


def ship(names: list[str], shipped_root: Path = SHIPPED_ROOT) -> list[Path]:
    """Build ``names`` from scratch (one fresh cache, so a dependency is built once) and publish
    each as ``<shipped_root>/<name>``."""
    for name in names:
        get_spec(name)  # an unknown name fails before an hour of building
    shipped_root.mkdir(parents=True, exist_ok=True)
    published = []
    with tempfile.TemporaryDirectory(prefix=".ship-", dir=shipped_root) as work:
        for name in names:
            built = ensure_standin(name, Path(work) / "cache")
            with staged_dir(shipped_root / name) as staged:
                shutil.copytree(built, staged, dirs_exist_ok=True)
            published.append(shipped_root / name)
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"stand-ins to ship (default: all of {', '.join(STANDINS)})")
    parser.add_argument("--check", action="store_true", help="only check the shipped copies against the builder")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in STANDINS]
    if unknown:
        parser.error(f"unknown stand-in(s) {', '.join(unknown)}; known: {', '.join(STANDINS)}")
    names = args.names or list(STANDINS)
    if args.check:
        problems = stale_shipped(names)
        print("\n".join(problems) or f"shipped stand-ins are current: {', '.join(names)}")
        return 1 if problems else 0
    for target in ship(names):
        man = read_manifest(target) or {}
        print(f"{target.name}: key {man.get('key')} sha256 {man.get('model_sha256')} "
              f"({man.get('model_bytes', 0) / 1e6:.1f} MB) -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
