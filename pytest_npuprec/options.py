"""The plugin's command-line options: canonical `--npuprec-*` names, short forms where nobody else holds them.

An installed pytest plugin is loaded in every pytest run of the environment, so it must never take an
option name a project's conftest registers itself (vllm-ascend's tests/e2e/models/conftest.py owns
`--report-dir`, its robot conftest `--model`). Every option therefore has a canonical `--npuprec-*` name,
registered with the plugin. Short forms are registered later, after the initial conftests (those of the
rootdir and of the paths on the command line) have registered theirs, and only for names still free.
A conftest in a subfolder is imported only during collection, after our short forms, and a clash
there is a crash (argparse's "conflicting option string"); so before registering a short form the
conftest.py files under the paths to be collected are read, and a name one of them registers
(`addoption("--model", ...)`) is left to it. `--report-dir` never gets a short form: vllm-ascend's
tests/e2e/models/conftest.py owns it.

Values are validated when parsed (an `argparse.ArgumentTypeError` is a usage error), so a bad
`--npuprec-fault` or `--npuprec-timeout` stops the run at once instead of failing every check.
This module imports nothing heavy.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from .runners.fault_names import FAULT_NAMES, LAYER_FAULTS, VISION_BLOCK_FAULTS

DEFAULT_MODEL = "tiny-llama"
DEFAULT_CONFIG_DIR = "tests/e2e/models/configs"
DEVICES = ("auto", "npu", "cuda", "cpu")
# --npuprec-diagnose (diagnose.py): on a failing logit check (default), for every model run, not at all
DIAGNOSE_MODES = ("auto", "always", "never")
# Short forms registered when free; --report-dir is left out on purpose (see the module docstring).
SHORT_FORMS = ("model", "device", "config-dir", "model-root")
NEVER_SHORT = {"report-dir": "vllm-ascend's tests/e2e/models/conftest.py registers --report-dir"}
SHORT_FORMS_INI = "npuprec_short_options"
_short_taken = pytest.StashKey[list]()  # short forms someone else held when ours were due


def _fault(text: str) -> str:
    from .runners.device import Fault  # light: device.py imports vLLM only when an engine starts

    try:
        Fault.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _timeout(text: str) -> float | dict[str, float]:
    """SECONDS for every engine phase, or start=SECONDS,call=SECONDS (either key may be left out)."""
    from .runners.watchdog import phase_timeouts  # light: psutil only

    def seconds(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            return math.nan
        return number if math.isfinite(number) else math.nan

    if "=" not in text:
        bound: float | dict[str, float] = seconds(text)
    else:
        pairs = [part.partition("=") for part in text.split(",")]
        bound = {key.strip(): seconds(value) for key, _, value in pairs}
    try:
        phase_timeouts(bound)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r} (per phase: "
                                         "start=SECONDS,call=SECONDS)") from None
    return bound


def _diagnose(text: str) -> str:
    if text not in DIAGNOSE_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DIAGNOSE_MODES)} (bare --npuprec-diagnose: "
                                         f"always), got {text!r}")
    return text


def _changed_files(text: str) -> str:
    if text != "-" and not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file; expected a file listing changed paths, one a "
                                         "line, or - to read them from stdin")
    return text


def _factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"expected a number >= 1 (bounds are the noise floor times it), got {text!r}")
    return value


# name (without --npuprec-) -> argparse attributes, shared by the canonical and the short form
OPTIONS: dict[str, dict[str, Any]] = {
    "model": dict(action="append", default=None, metavar="NAME", dest="npuprec_model",
                  help=f"model config(s) to run: config file stem, model_name or its last part; repeatable and "
                       f"comma-separated; 'all' = every config with a precision section (default: {DEFAULT_MODEL})"),
    "config-dir": dict(default=None, metavar="DIR", dest="npuprec_config_dir",
                       help=f"folder of <model>.yaml configs (default: ini npuprec_config_dir, "
                            f"<rootdir>/{DEFAULT_CONFIG_DIR})"),
    "model-root": dict(action="append", default=None, metavar="DIR", dest="npuprec_model_root",
                       help="folder holding real checkpoints, laid out like a ModelScope or Hugging Face cache; "
                            "repeatable (default: $NPUPREC_MODEL_ROOT, ':'-separated)"),
    "device": dict(default=None, choices=DEVICES, dest="npuprec_device",
                   help="device for the engine under test; 'npu' fails the run when torch_npu/vllm-ascend are "
                        "missing, it never falls back (default: auto)"),
    "report-dir": dict(default=None, metavar="DIR", dest="npuprec_report_dir",
                       help="where JSON/Markdown reports and captures go (default: <rootdir>/reports/npuprec)"),
    "fault": dict(default=None, metavar="NAME[=MAGNITUDE][:layer=N][:block=B][@MODEL]", type=_fault,
                  dest="npuprec_fault",
                  help=f"inject a device-side fault ({', '.join(FAULT_NAMES)}), into MODEL's engine only with @MODEL, "
                       f"to prove the checks can fail; for validating the suite itself; {', '.join(LAYER_FAULTS)} "
                       "takes a decoder layer index and a block (attention, mlp), the MoE faults a MoE layer index "
                       f"(layer=N), {', '.join(VISION_BLOCK_FAULTS)} a vision block (layer=N) and a part "
                       "(block=attention|mlp)"),
    "diagnose": dict(nargs="?", const="always", default=None, metavar="auto|always|never", type=_diagnose,
                     dest="npuprec_diagnose",
                     help="rerun a model's worst prompt with every decoder layer's output captured on the device "
                          "(eager), the FP32 reference and transformers BF16 (the floor), and name the first layer "
                          "(and block) that leaves its floor: auto = when a logit check fails (the default), always "
                          "(also bare --npuprec-diagnose), never"),
    "timeout": dict(default=None, metavar="SECONDS|start=S,call=S", type=_timeout, dest="npuprec_timeout",
                    help="bound on each engine phase (start; call: each generate and score), in seconds: one "
                         "number for all, or per phase; overrides precision.timeout_s"),
    "reference": dict(default=None, choices=("auto", "live", "baseline"), dest="npuprec_reference",
                      help="where the FP32 reference comes from: live (transformers), baseline (the recorded one; "
                           "fails when it is missing or does not match today's inputs) or auto (a valid baseline, "
                           "else live; the default)"),
    "baseline-dir": dict(default=None, metavar="DIR", dest="npuprec_baseline_dir",
                         help="folder of <model>/ baselines (default: $NPUPREC_BASELINE_DIR, else <rootdir>/baselines)"),
    "update-baselines": dict(action="store_true", default=False, dest="npuprec_update_baselines",
                             help="run the live FP32 reference and record it as the baseline of each model run, and "
                                  "the device's metrics for this hardware when every check passed"),
    "require-records": dict(action="store_true", default=False, dest="npuprec_require_records",
                            help="a drift check with nothing to compare with (no baseline folder, no device record "
                                 "for this hardware, a record of other inputs, a device whose name cannot be read) "
                                 "is red instead of skipped; for the nightly"),
    "changed-files": dict(default=None, metavar="FILE", type=_changed_files, dest="npuprec_changed_files",
                          help="keep only the models a change touches: FILE lists changed paths one a line ('-' = "
                               "stdin, e.g. from `git diff --name-only`); a changed config selects its model, and "
                               "so does a path matching its gate.paths. Nothing affected: exit 0"),
    "calibrate": dict(action="store_true", default=False, dest="npuprec_calibrate",
                      help="measure each selected model's BF16 noise floor (transformers BF16 vs FP32) next to the "
                           "device vs FP32, and write precision.thresholds (floor x factor, rounded outwards) into "
                           "its YAML; a config without a precision section gets one. One item per model, "
                           "test_precision[<model>-calibrate]"),
    "calibrate-factor": dict(default=None, metavar="F", type=_factor, dest="npuprec_calibrate_factor",
                             help="bounds = noise floor x F (default 3)"),
    "calibrate-force": dict(action="store_true", default=False, dest="npuprec_calibrate_force",
                            help="write bounds even from a device already outside the floor by more than the factor"),
    "calibrate-runs": dict(default=None, metavar="N", type=int, dest="npuprec_calibrate_runs",
                           help="run the device N times in the calibration (default 1) and propose precision.drift "
                                "tolerances from the run-to-run spread of each metric's mean x the factor"),
}
DEFAULT_CALIBRATE_FACTOR = 3.0


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("npuprec", "NPU precision suite (pytest-npuprec)")
    for name, attrs in OPTIONS.items():
        short = f" Also --{name} unless another plugin or conftest holds it." if name in SHORT_FORMS else ""
        group.addoption(f"--npuprec-{name}", **dict(attrs, help=attrs["help"] + short))
    parser.addini("npuprec_config_dir", "default for --npuprec-config-dir", default=DEFAULT_CONFIG_DIR)
    parser.addini(SHORT_FORMS_INI, "short option forms to register when free (default: "
                                   f"{' '.join(SHORT_FORMS)}); empty = canonical --npuprec-* names only",
                  type="args", default=list(SHORT_FORMS))


_PRUNE = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "build", "dist"})


def _later_conftests(config: pytest.Config) -> list[Path]:
    """conftest.py files below the paths pytest is about to collect (loaded only during collection)."""
    # Early, the value of a short option no one registered yet (`--model foo`) is taken for a path: keep
    # only the arguments that exist.
    args = [a.split("::")[0] for a in (config.known_args_namespace.file_or_dir or [])]
    args = [a for a in args if (config.invocation_params.dir / a).exists()]
    if not args:
        args = config.getini("testpaths") or ["."]
    found = []
    for arg in args:
        top = config.invocation_params.dir / arg
        if not top.is_dir():
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _PRUNE and not d.endswith(".egg-info")]
            if "conftest.py" in files and Path(folder) != top:
                found.append(Path(folder) / "conftest.py")
    return found


def _registered_by(conftests: list[Path], name: str) -> Path | None:
    pattern = re.compile(r"""addoption\(\s*(?:["'][^"']*["']\s*,\s*)*["']--%s["']""" % re.escape(name))
    for path in conftests:
        try:
            if pattern.search(path.read_text(encoding="utf-8", errors="replace")):
                return path
        except OSError:
            continue
    return None


def _held(parser: pytest.Parser, option: str) -> bool:
    """Is `option` registered already (by any plugin or conftest, in any group)?"""
    groups = [*getattr(parser, "_groups", []), getattr(parser, "_anonymous", None)]
    return any(option in opt.names() for group in groups if group is not None
               for opt in getattr(group, "options", []))


def add_short_forms(config: pytest.Config, parser: pytest.Parser) -> None:
    """Register the short forms that are still free; called once the initial conftests are loaded."""
    wanted = config.getini(SHORT_FORMS_INI)
    unknown = [w for w in wanted if w not in SHORT_FORMS]
    if unknown:
        why = "; ".join(f"--{w}: {NEVER_SHORT[w]}" for w in unknown if w in NEVER_SHORT)
        raise pytest.UsageError(f"ini {SHORT_FORMS_INI}: {', '.join(unknown)}: expected some of "
                                f"{', '.join(SHORT_FORMS)}" + (f" ({why})" if why else ""))
    taken: list[tuple[str, str]] = []  # (option, who holds it)
    group = parser.getgroup("npuprec")
    later = _later_conftests(config) if wanted else []
    for name in SHORT_FORMS:
        if name not in wanted:
            continue
        owner = _registered_by(later, name)
        if owner is not None:
            taken.append((f"--{name}", str(owner)))
            continue
        if _held(parser, f"--{name}"):  # pytest < 9 would only fail later, when it builds its argparse parser
            taken.append((f"--{name}", "another plugin or conftest"))
            continue
        attrs = dict(OPTIONS[name], help=f"same as --npuprec-{name}")
        attrs.pop("default")  # the canonical option set it; argparse keeps the first default of a dest
        try:
            group.addoption(f"--{name}", **attrs)
        except (ValueError, argparse.ArgumentError):  # pytest < 9 raises ValueError, 9 argparse's error
            taken.append((f"--{name}", "another plugin or conftest"))
    config.stash[_short_taken] = taken


def short_forms_taken(config: pytest.Config) -> list[tuple[str, str]]:
    """(short form, who holds it) for each short form left to someone else."""
    return config.stash.get(_short_taken, [])


def cli_path(config: pytest.Config, value: str) -> Path:
    """A path given on the command line is relative to where pytest was started."""
    return (config.invocation_params.dir / Path(value).expanduser()).resolve()


def requested_models(config: pytest.Config) -> tuple[list[str], bool]:
    """(model names, whether the user named them): --npuprec-model/--model, else the default."""
    names = [n.strip() for v in config.getoption("npuprec_model") or [] for n in v.split(",") if n.strip()]
    return (names, True) if names else ([DEFAULT_MODEL], False)


def config_dir(config: pytest.Config) -> Path:
    value = config.getoption("npuprec_config_dir")
    if value:
        return cli_path(config, value)
    return (config.rootpath / config.getini("npuprec_config_dir")).resolve()


def report_dir(config: pytest.Config) -> Path:
    value = config.getoption("npuprec_report_dir")
    return cli_path(config, value) if value else config.rootpath / "reports" / "npuprec"


def model_roots(config: pytest.Config) -> list[Path]:
    from .env_vars import MODEL_ROOT_ENV

    values = config.getoption("npuprec_model_root") or [p for p in os.environ.get(MODEL_ROOT_ENV, "").split(":") if p]
    return [cli_path(config, v) for v in values]


def device(config: pytest.Config) -> str:
    return config.getoption("npuprec_device") or "auto"


def baseline_dir(config: pytest.Config) -> Path:
    from .env_vars import BASELINE_DIR_ENV

    value = config.getoption("npuprec_baseline_dir")
    if value:
        return cli_path(config, value)
    env = os.environ.get(BASELINE_DIR_ENV)
    return Path(env).expanduser().resolve() if env else config.rootpath / "baselines"


def reference(config: pytest.Config) -> str:
    """auto | live | baseline; refuses --npuprec-reference baseline together with --npuprec-update-baselines."""
    value = config.getoption("npuprec_reference") or "auto"
    if config.getoption("npuprec_update_baselines") and value == "baseline":
        raise pytest.UsageError("--npuprec-update-baselines records the live reference; it cannot run with "
                                "--npuprec-reference baseline (leave --npuprec-reference out, or set it to live)")
    return value


def require_records(config: pytest.Config) -> bool:
    """--npuprec-require-records; refused together with --npuprec-update-baselines (the run that writes a model's
    first record would be red for lack of it)."""
    value = bool(config.getoption("npuprec_require_records"))
    if value and config.getoption("npuprec_update_baselines"):
        raise pytest.UsageError("--npuprec-require-records makes a drift check without a device record red; it "
                                "cannot run with --npuprec-update-baselines, which records them (run the update "
                                "without it)")
    return value


def calibration(config: pytest.Config) -> tuple[float, bool, int] | None:
    """(factor, force, device runs) with --npuprec-calibrate, else None; refuses calibration options that
    contradict."""
    factor, force = config.getoption("npuprec_calibrate_factor"), config.getoption("npuprec_calibrate_force")
    runs = config.getoption("npuprec_calibrate_runs")
    if not config.getoption("npuprec_calibrate"):
        if factor is not None or force or runs is not None:
            raise pytest.UsageError("--npuprec-calibrate-factor, --npuprec-calibrate-force and "
                                    "--npuprec-calibrate-runs go with --npuprec-calibrate")
        return None
    if runs is not None and runs < 1:
        raise pytest.UsageError(f"--npuprec-calibrate-runs {runs}: expected a number of device runs >= 1")
    if config.getoption("npuprec_update_baselines") or config.getoption("npuprec_reference") == "baseline":
        raise pytest.UsageError("--npuprec-calibrate runs the live FP32 reference and records nothing; run "
                                "--npuprec-update-baselines (or --npuprec-reference baseline) in a run of its own, "
                                "after calibrating")
    return (DEFAULT_CALIBRATE_FACTOR if factor is None else factor), force, runs or 1
