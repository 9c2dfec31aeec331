"""A config is enough: pytest collects each selected <model>.yaml of the config folder itself.

One item per (model, check), named `test_precision[<model>-<check>]` (CI history keys on these ids),
each marked `npu`. A config that does not validate is one red item, `test_precision[<model>-config]`,
and the other models still collect and run. Nothing heavy is imported here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from . import options
from .selection import CONFIG_SUFFIXES, Selection, SelectionError, gate, read_changed_files, resolve, scan

ITEM = "test_precision"
_selection_key = pytest.StashKey[Selection]()
_unknown_keys_key = pytest.StashKey[dict]()  # config path -> top-level keys the suite does not know
_stdin_key = pytest.StashKey[list]()  # the changed paths read from stdin


def read_stdin_early(config: pytest.Config) -> None:
    """`--npuprec-changed-files -`: read stdin before pytest's capture replaces it."""
    if getattr(config.known_args_namespace, "npuprec_changed_files", None) == "-":
        if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's stdin is not the pipe the listing came through
            raise pytest.UsageError("--npuprec-changed-files -: with pytest-xdist, write the changed paths to a "
                                    "file and pass the file")
        config.stash[_stdin_key] = read_changed_files("-")


def selection(config: pytest.Config) -> Selection:
    """The session's selection, computed once (it may read the changed files from stdin)."""
    found = config.stash.get(_selection_key, None)
    if found is not None:
        return found
    config_dir = options.config_dir(config)
    requested, explicit = options.requested_models(config)
    changed_source = config.getoption("npuprec_changed_files")
    if changed_source is not None and not explicit:
        requested = ["all"]  # a PR gate looks at every model, unless told which
    entries = scan(config_dir)
    names = resolve(entries, requested, config_dir, explicit, require_configs=explicit or changed_source is not None)
    sel = Selection(config_dir, names, explicit or changed_source is not None)
    if changed_source is not None:
        sel.changed = (config.stash[_stdin_key] if changed_source == "-" and _stdin_key in config.stash
                       else read_changed_files(changed_source))
        bases = list(dict.fromkeys([config.invocation_params.dir, config.rootpath]))
        sel.names, sel.gated_out = gate(entries, names, sel.changed, bases)
    config.stash[_selection_key] = sel
    return sel


def prepare(config: pytest.Config) -> None:
    """Resolve the selection before collection when the user asked for models: a wrong name is a usage error."""
    if options.requested_models(config)[1] or config.getoption("npuprec_changed_files") is not None:
        try:
            selection(config)
        except SelectionError as exc:
            raise pytest.UsageError(f"pytest-npuprec: {exc}") from None


def add_config_dir(config: pytest.Config) -> None:
    """`--npuprec-config-dir DIR` outside every path pytest walks (a copy of a config in /tmp): the selected
    configs of DIR become collection arguments too, so they run wherever DIR is; rootdir, conftests and ini
    stay the project's (early_args.py keeps pytest from taking DIR for the rootdir)."""
    if config.getoption("npuprec_config_dir") is None:
        return
    sel = selection(config)
    if any(_walks(config, arg, sel.config_dir) for arg in config.args):
        return
    entries = scan(sel.config_dir)
    config.args.extend(str(entries[name].path) for name in sel.names if name in entries)


def _walks(config: pytest.Config, arg: str, config_dir: Path) -> bool:
    """Does collecting `arg` (a path, maybe with ::node) reach the configs directly in `config_dir`?"""
    path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
    return path == config_dir or (path.is_dir() and path in config_dir.parents) or path.parent == config_dir


def collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in CONFIG_SUFFIXES:
        return None
    sel = selection(parent.config)  # an explicit request was resolved (or refused) before collection
    if file_path.parent.resolve() != sel.config_dir:
        return None
    sel.visited = True
    given = not sel.explicit and parent.session.isinitpath(file_path)  # `pytest configs/X.yaml` runs X
    if file_path.stem in sel.names or given:
        return ConfigFile.from_parent(parent, path=file_path, **_outside_nodeid(parent.config, file_path))
    return None


def _outside_nodeid(config: pytest.Config, file_path: Path) -> dict[str, str]:
    """A config outside the rootdir (add_config_dir) is named by its absolute path, so that its node ids say where
    it is and can be run again as given; pytest would name it by nothing ("::test_precision[...]")."""
    try:
        file_path.relative_to(config.rootpath)
    except ValueError:
        return {"nodeid": file_path.as_posix()}
    return {}


class ConfigFile(pytest.File):
    """One model config: its checks, or one red item when it does not validate."""

    def collect(self) -> Iterator[pytest.Item]:
        from .config.loader import ConfigError, load_config

        if options.calibration(self.config) is not None:  # thresholds (even precision:) may be missing: it writes them
            yield CalibrateItem.from_parent(self, name=f"{ITEM}[{self.path.stem}-calibrate]")
            return
        try:
            model = load_config(self.path)
            if model.precision is None:
                raise ConfigError(self.path, "precision", "this config has no precision section; expected prompts, "
                                                          "max_tokens and thresholds under precision: (--npuprec-"
                                                          "calibrate adds one, with measured thresholds)")
        except ConfigError as exc:
            yield InvalidConfigItem.from_parent(self, name=f"{ITEM}[{self.path.stem}-config]", error=exc)
            return
        if model.unknown:
            self.config.stash.setdefault(_unknown_keys_key, {})[str(self.path)] = sorted(model.unknown)
        for check_id in model.check_ids:
            yield PrecisionItem.from_parent(self, name=f"{ITEM}[{model.name}-{check_id}]", model=model,
                                            check_id=check_id)


class _NpuItem(pytest.Item):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(pytest.mark.npu)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, self.name  # line 0: a skip is reported at the config (`-rs`: <config>.yaml:1)


class PrecisionItem(_NpuItem):
    """One check of one model: device (vLLM) vs FP32 CPU reference, judged against the model's YAML."""

    def __init__(self, *, model: Any, check_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model, self.check_id = model, check_id
        # a model runs once per worker that holds one of its checks: under `pytest -n N --dist loadgroup` all
        # of them go to one worker
        self.add_marker(pytest.mark.xdist_group(f"npuprec-{model.name}"))

    def runtest(self) -> None:
        from .results import record_verdict, runs

        result = runs(self.config).get(self.model)
        self.user_properties.extend([("model", self.model.name), ("check", self.check_id)])
        if result.error is not None:
            pytest.fail(f"{self.model.name}: could not run: {result.describe_error()}", pytrace=False)
        verdict = result.verdicts[self.check_id]
        record_verdict(self.user_properties, verdict)
        if verdict.skipped is not None:  # compared nothing: counted as skipped, with the reason, at the config
            raise pytest.skip.Exception(verdict.message, _use_item_location=True)
        if not verdict.passed:
            pytest.fail(verdict.message, pytrace=False)


class CalibrateItem(_NpuItem):
    """--npuprec-calibrate: measure the model's noise floor and write its bounds (calibrate/)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(pytest.mark.xdist_group(f"npuprec-{self.path.stem}"))

    def runtest(self) -> None:
        from .calibrate.item import run_item

        run_item(self)


class InvalidConfigItem(_NpuItem):
    """A config that does not validate: red, with the file, the key and what was expected."""

    def __init__(self, *, error: Exception, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        self.user_properties.extend([("model", self.path.stem), ("check", "config")])
        pytest.fail(f"pytest-npuprec: invalid config: {self.error}", pytrace=False)


def summary_lines(config: pytest.Config) -> list[str]:
    """Notes for the terminal summary: unknown keys, short forms held by others, the PR gate's outcome."""
    lines = []
    for path, keys in config.stash.get(_unknown_keys_key, {}).items():
        lines.append(f"warning: {path}: top-level key(s) this suite does not know, kept and ignored: "
                     f"{', '.join(keys)}")
    sel = config.stash.get(_selection_key, None)
    if sel is None:
        return lines
    taken = options.short_forms_taken(config)
    for option, owner in taken:
        lines.append(f"note: {option} belongs to {owner}; pytest-npuprec reads only --npuprec-{option[2:]}")
    if sel.changed is not None:
        if sel.names:
            lines.append(f"PR gate: {len(sel.changed)} changed path(s) select {', '.join(sel.names)}"
                         + (f"; not affected: {', '.join(sel.gated_out)}" if sel.gated_out else ""))
        else:
            lines.append(f"PR gate: no model is affected by the {len(sel.changed)} changed path(s) "
                         f"({len(sel.gated_out)} model config(s) looked at); nothing to run")
    elif sel.explicit and sel.names and not sel.visited:
        lines.append(f"note: --model {', '.join(sel.names)} was asked for, but pytest did not walk {sel.config_dir}; "
                     "run from the folder holding it, or pass that folder (or the YAML) as an argument")
    return lines


def nothing_affected(config: pytest.Config) -> bool:
    sel = config.stash.get(_selection_key, None)
    return sel is not None and sel.changed is not None and not sel.names


__all__ = ["add_config_dir", "collect_file", "prepare", "selection", "summary_lines", "nothing_affected", "read_changed_files"]
