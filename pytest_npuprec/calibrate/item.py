"""The pytest side of --npuprec-calibrate: one item per model, `test_precision[<model>-calibrate]`, that passes
when bounds were written and fails when they were refused or the model could not run. Light: nothing heavy is
imported until the item runs."""
from __future__ import annotations

import pytest

_calibrations_key = pytest.StashKey[dict]()  # model -> Calibration, for the terminal summary


def run_item(item: pytest.Item) -> None:
    from .. import options
    from ..results import runs
    from .session import calibrate_model

    factor, force, device_runs = options.calibration(item.config) or (options.DEFAULT_CALIBRATE_FACTOR, False, 1)
    cal = calibrate_model(item.path, runs(item.config).options_for, factor, force, device_runs)
    item.config.stash.setdefault(_calibrations_key, {})[cal.model] = cal
    item.user_properties.extend([("model", cal.model), ("check", "calibrate"), ("passed", str(cal.written).lower())])
    if not cal.written:
        pytest.fail(cal.message, pytrace=False)


def summary_lines(config: pytest.Config) -> list[str]:
    from .table import render

    return [line for cal in config.stash.get(_calibrations_key, {}).values() for line in render(cal) + [""]]
