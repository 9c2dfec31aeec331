# Project-level pytest setup. The npuprec plugin itself is loaded through its pytest11 entry
# point (pip install -e .); pytester drives the suite in subprocesses for the e2e self-tests.
from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path, PurePosixPath

pytest_plugins = ["pytester"]

_TESTS = Path(__file__).parent / "tests"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """`pytest -m npu` runs the precision suite only (the YAML configs the plugin collects). The project's
    own test modules carry no npu mark, so they are not even imported: a plain install (no test extras
    such as hypothesis) can run the headline command from the project root."""
    if (config.getoption("markexpr") or "").strip() != "npu":
        return None
    if collection_path == _TESTS / "unit" or (collection_path.suffix == ".py" and _TESTS in collection_path.parents
                                              and collection_path.name != "conftest.py"):
        return True
    return None

def pytest_configure(config) -> None:
    """Under pytest-xdist (`./dev.sh test` runs two workers), each worker's engines get a core of their own:
    vLLM's CPU worker binds its OpenMP threads to core 0 otherwise, in both workers at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cpus = sorted(os.sched_getaffinity(0))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cpus[int(worker[2:]) % len(cpus)])


_started = time.monotonic()
_seconds: dict[str, float] = defaultdict(float)
_tests: dict[str, set[str]] = defaultdict(set)


def _group(nodeid: str) -> str:
    """tests/unit as one group; each end-to-end module (they start engines) on its own."""
    path = PurePosixPath(nodeid.split("::", 1)[0])
    return "tests/unit" if path.parts[:2] == ("tests", "unit") else str(path)


def pytest_runtest_logreport(report) -> None:
    group = _group(report.nodeid)
    _seconds[group] += report.duration  # setup + call + teardown, so module fixtures count where they run
    _tests[group].add(report.nodeid)


def pytest_terminal_summary(terminalreporter) -> None:
    """Where CI time goes, so a change that slows a group shows in its own run."""
    if not _seconds:
        return
    terminalreporter.section("time per test group")
    for group, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds / 60:6.1f} min  {len(_tests[group]):4d} tests  {group}")
    workers = getattr(terminalreporter.config.option, "numprocesses", None)
    terminalreporter.write_line(f"{sum(_seconds.values()) / 60:6.1f} min  in all" +
                                (f" (summed over {workers} workers)" if workers not in (None, 0, 1) else ""))
    terminalreporter.write_line(f"{(time.monotonic() - _started) / 60:6.1f} min  wall clock of the session")
