"""The command line as pytest read it before it knew this plugin's options, put right.

pytest picks its rootdir and ini file, and later the initial conftests, from the free arguments of a
first parse that knows only its own options: the value of `--npuprec-config-dir /some/dir` (or of a
short form, `--config-dir /some/dir`, registered later still) is taken for a path to test. The rootdir
then moves to /some/dir, the project's ini is not read, and the project's conftest.py is loaded as a
non-top-level one ("Defining 'pytest_plugins' in a non-top-level conftest is no longer supported").
`repair` runs first in pytest_load_initial_conftests, when the plugin's options are known: it drops
those values from the free arguments and, when they moved the rootdir, sets rootdir and ini back to
what the command line without them gives (the ini's addopts too; a `-p` plugin named only there is not
loaded). That takes pytest 9's internals; under another pytest, write `--opt=value`, which never had the
problem.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest

from .options import OPTIONS, SHORT_FORMS


def _takes_value(attrs: dict[str, Any]) -> bool:
    return attrs.get("action") not in ("store_true", "store_false", "count")


def option_values(args: list[str]) -> list[str]:
    """The tokens of `args` that are the value of one of this plugin's options given as `--opt value`."""
    names = {f"--npuprec-{n}" for n, a in OPTIONS.items() if _takes_value(a)}
    names |= {f"--{n}" for n in SHORT_FORMS if _takes_value(OPTIONS[n])}
    values = []
    for i, token in enumerate(args[:-1]):
        if token == "--":
            break
        if token in names:
            values.append(args[i + 1])
    return values


def _without(free: list[str], values: list[str]) -> list[str]:
    left = list(free)
    for value in values:
        if value in left:
            left.remove(value)
    return left


def repair(config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Drop our options' values from the free arguments; give back the rootdir and ini they moved."""
    ns = config.known_args_namespace
    values = option_values(args)
    if not values:
        return
    cleaned = _without(list(getattr(ns, "file_or_dir", None) or []), values)
    ns.file_or_dir = cleaned  # the initial conftests are looked up from these (pytest's own hook, after ours)
    try:  # pytest 9's internals; another pytest keeps its own rootdir choice (write --option=VALUE there)
        from _pytest.config.findpaths import determine_setup

        rootpath, inipath, inicfg, ignored = determine_setup(
            inifile=ns.inifilename, override_ini=ns.override_ini, args=cleaned, rootdir_cmd_arg=ns.rootdir or None,
            invocation_dir=config.invocation_params.dir)
    except (ImportError, TypeError, ValueError):
        return
    if (rootpath, inipath) == (config.rootpath, config.inipath) or not all(
            hasattr(config, a) for a in ("_rootpath", "_inipath", "_inicfg", "_inicache", "_ignored_config_files")):
        return
    config._rootpath, config._inipath, config._inicfg = rootpath, inipath, inicfg
    config._ignored_config_files = ignored
    config._inicache.clear()
    parser.extra_info.update(rootdir=str(rootpath), inifile=str(inipath))
    addopts = config.getini("addopts")
    if addopts:
        args[:] = list(addopts) + args
    _reparse(config, parser, args, inipath)


def _reparse(config: pytest.Config, parser: pytest.Parser, args: list[str], inipath: Any) -> None:
    """known_args_namespace as pytest would have parsed it with the right ini (its addopts, its confcutdir)."""
    ns = parser.parse_known_args(args, namespace=copy.copy(config.option))
    ns.file_or_dir = _without(list(ns.file_or_dir or []), option_values(args))
    if ns.confcutdir is None:
        ns.confcutdir = str(inipath.parent if inipath is not None else config.rootpath)
    config.known_args_namespace = ns
