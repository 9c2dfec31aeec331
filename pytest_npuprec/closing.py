"""Engine processes that outlived their close (runners/device.py `take_survivors`): never dropped.

At the end of the session, once every background close is done, each survivor list goes into its model's
report (run.engine_survivors, the JSON and Markdown written again) and into the terminal summary as an
error, and a session that had passed fails: a process left on the device holds its memory and can change
what the next run measures.
"""
from __future__ import annotations

import sys

import pytest

_lines_key = pytest.StashKey[list]()


def settle(config: pytest.Config) -> list[str]:
    """Wait for the background closes; report what outlived them. Returns the error lines (also kept for
    `summary_lines`)."""
    device = sys.modules.get("pytest_npuprec.runners.device")  # imported only once an engine ran
    if device is None:
        return []
    device.finish_closing()
    from .report.render import survivors
    from .report.write import write_report
    from .results import runs

    results = runs(config).results
    lines = []
    for model, processes in device.take_survivors():
        lines.append(f"ERROR: {model}: {survivors(processes)}")
        result = results.get(model)
        if result is not None and result.report is not None and result.report_paths.get("json"):
            result.report.setdefault("run", {}).setdefault("engine_survivors", []).extend(processes)
            write_report(result.report, result.report_paths["json"].parent)
    config.stash[_lines_key] = config.stash.get(_lines_key, []) + lines
    return lines


def summary_lines(config: pytest.Config) -> list[str]:
    return config.stash.get(_lines_key, [])
