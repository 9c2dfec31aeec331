"""The engine watchdog without an engine: stand-in processes that hang, die or leave orphans behind."""
from __future__ import annotations

import math
import multiprocessing
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

psutil = pytest.importorskip("psutil")

from pytest_npuprec.config.schema import ServeConfig  # noqa: E402
from pytest_npuprec.runners.device import EngineFailure, Fault, VllmRunner  # noqa: E402
from pytest_npuprec.runners.watchdog import (DEFAULT_TIMEOUTS_S, PhaseTimeout, ProcessDied,  # noqa: E402
                                             ProcessTree, phase_timeouts, run_bounded)

SLEEPER = "import time; time.sleep(120)"
_SPAWN = multiprocessing.get_context("spawn")


def titled(title: str) -> str:
    """Code that sets the process title as vLLM does (VLLM::EngineCore) and sleeps."""
    return f"import setproctitle, time; setproctitle.setproctitle({title!r}); time.sleep(120)"


def start_engine(code: str):
    """A stand-in engine process, started as vLLM starts its EngineCore (multiprocessing, spawn)."""
    proc = _SPAWN.Process(target=exec, args=(code,), daemon=True)
    proc.start()
    return proc


def exit_code(proc) -> int | None:
    proc.join(10)
    return proc.exitcode


def spawn(code: str) -> subprocess.Popen:
    """A plain subprocess of this process's own code (as vLLM runs its registry inspection or lscpu)."""
    return subprocess.Popen([sys.executable, "-c", code])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def reap():
    """Processes (Popen or multiprocessing) to kill and reap after the test, whatever it did to them."""
    procs: list = []
    yield procs
    for proc in procs:
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        else:
            if proc.is_alive():
                proc.kill()
            proc.join(10)


def test_default_bounds_suit_a_healthy_npu_engine_and_one_number_bounds_every_phase():
    assert phase_timeouts(None) == DEFAULT_TIMEOUTS_S
    assert DEFAULT_TIMEOUTS_S["start"] >= 1800 and min(DEFAULT_TIMEOUTS_S.values()) >= 600
    assert phase_timeouts(60) == {"start": 60.0, "generate": 60.0, "score": 60.0}
    assert phase_timeouts(math.inf)["score"] == math.inf
    for bad in (0, -5, math.nan, "60", True):
        with pytest.raises(ValueError, match="positive number of seconds"):
            phase_timeouts(bad)


def test_start_and_call_are_bounded_apart():
    assert phase_timeouts({"start": 600, "call": 30}) == {"start": 600.0, "generate": 30.0, "score": 30.0}
    assert phase_timeouts({"call": 30}) == {**DEFAULT_TIMEOUTS_S, "generate": 30.0, "score": 30.0}
    with pytest.raises(ValueError, match="expected start and/or call"):
        phase_timeouts({"generate": 30})
    with pytest.raises(ValueError, match="positive number of seconds"):
        phase_timeouts({"start": 600, "call": 0})


def test_run_bounded_returns_the_result_or_raises_the_calls_own_error():
    assert run_bounded(lambda: 42, 5) == 42
    with pytest.raises(KeyError, match="boom"):
        run_bounded(lambda: {}["boom"], 5)


def test_a_call_that_never_returns_times_out_at_its_bound():
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(PhaseTimeout, match=r"no answer within 0.5 s") as info:
        run_bounded(never.wait, 0.5, poll_s=0.1)
    assert 0.5 <= time.monotonic() - started < 3
    assert info.value.thread.is_alive()  # abandoned, still waiting: the caller must wake or kill it
    never.set()
    info.value.thread.join(5)


def test_the_tree_holds_the_engine_processes_started_after_it_and_kills_them(reap):
    before = start_engine(SLEEPER)
    reap.append(before)
    tree = ProcessTree()
    after = start_engine(SLEEPER)
    own = spawn(SLEEPER)  # a subprocess of this process's own code, not an engine process
    reap.extend([after, own])
    wait_for(lambda: (tree.refresh(), after.pid in {k[0] for k in tree.procs})[1])
    assert {k[0] for k in tree.procs} == {after.pid}

    killed, left = tree.kill()
    assert [f"(pid {after.pid})" in k for k in killed] == [True] and left == []
    assert exit_code(after) == -signal.SIGKILL
    assert before.is_alive() and own.poll() is None  # not this engine's: untouched


def test_a_grandchild_orphaned_by_its_parents_death_is_still_killed(reap, tmp_path):
    # the EngineCore dies, its worker is re-parented away from us: it must not survive holding memory
    pid_file = tmp_path / "grandchild.pid"
    tree = ProcessTree()
    parent = start_engine(textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """))
    reap.append(parent)
    wait_for(lambda: pid_file.is_file() and pid_file.read_text())
    grandchild = int(pid_file.read_text())
    wait_for(lambda: (tree.refresh(), grandchild in {k[0] for k in tree.procs})[1])
    parent.kill()
    parent.join(10)
    wait_for(lambda: psutil.Process(grandchild).ppid() != parent.pid if not gone(grandchild) else True)
    assert not gone(grandchild)  # orphaned, alive, no longer below us

    killed, left = tree.kill()
    assert any(f"(pid {grandchild})" in k for k in killed) and left == []
    assert gone(grandchild)


def test_a_watched_process_that_dies_ends_the_phase_at_once_naming_it_and_its_signal(reap):
    pytest.importorskip("setproctitle")
    tree = ProcessTree()
    engine = start_engine(titled("VLLM::EngineCore"))
    reap.append(engine)
    helper = start_engine(SLEEPER)  # an untitled process of the engine: not watched
    reap.append(helper)
    wait_for(lambda: (tree.refresh(), len(tree.procs) == 2 and "VLLM::EngineCore" in tree.names.values())[1])
    tree.watch()
    assert len(tree.watched) == 1
    helper.kill()  # its end is not the engine's death: the cause below names the EngineCore alone
    helper.join(10)

    threading.Timer(1.0, engine.kill).start()
    started = time.monotonic()
    with pytest.raises(ProcessDied) as info:
        run_bounded(threading.Event().wait, 60, tree, "generate", poll_s=0.1)
    assert time.monotonic() - started < 10  # not the 60 s bound: death is seen as it happens
    assert info.value.cause == (f"the engine died: VLLM::EngineCore (pid {engine.pid}) was killed by SIGKILL "
                                "(what the OOM killer sends)")


def runner_with_fake_engine(reap, timeout_s: float) -> tuple:
    """A VllmRunner whose 'engine' is two stand-in processes (EngineCore and its worker), no vLLM."""
    pytest.importorskip("setproctitle")
    runner = VllmRunner("/nonexistent/tiny-llama", ServeConfig(), "cpu", model="tiny-llama", timeout_s=timeout_s)
    runner._tree = ProcessTree()
    core, worker = start_engine(titled("VLLM::EngineCore")), start_engine(titled("VLLM::Worker"))
    reap.extend([core, worker])
    wait_for(lambda: (runner._tree.refresh(),
                      sorted(n for n in runner._tree.names.values() if n.startswith("VLLM::")))[1]
             == ["VLLM::EngineCore", "VLLM::Worker"])
    runner._tree.watch()
    return runner, core, worker


def test_a_hung_engine_is_killed_and_fails_naming_model_phase_and_cause(reap):
    runner, core, worker = runner_with_fake_engine(reap, timeout_s=1)
    with pytest.raises(EngineFailure) as info:
        runner._bounded("score", core.join)  # like a call to the engine: it returns once the engine is gone
    failure = info.value
    assert (failure.model, failure.phase) == ("tiny-llama", "score")
    assert 1 <= failure.elapsed_s < 10
    assert re.match(r"the device engine of tiny-llama failed during score after \d+\.\d s: no answer within 1 s; "
                    r"killed the engine's processes: ", str(failure)), str(failure)
    assert f"VLLM::EngineCore (pid {core.pid})" in str(failure) and f"VLLM::Worker (pid {worker.pid})" in str(failure)
    assert exit_code(core) == -signal.SIGKILL and exit_code(worker) == -signal.SIGKILL
    assert "still runs" not in str(failure)  # the abandoned call ended once the engine was gone
    assert runner._tree is None and runner.llm is None  # torn down: nothing left for the next model


def test_a_dead_worker_fails_the_phase_and_the_rest_of_the_engine_is_killed(reap):
    runner, core, worker = runner_with_fake_engine(reap, timeout_s=600)
    threading.Timer(1.0, worker.kill).start()
    started = time.monotonic()
    with pytest.raises(EngineFailure) as info:
        runner._bounded("generate", core.join)
    assert time.monotonic() - started < 15
    assert str(info.value) == (
        f"the device engine of tiny-llama failed during generate after {info.value.elapsed_s:.1f} s: "
        f"the engine died: VLLM::Worker (pid {worker.pid}) "
        f"was killed by SIGKILL (what the OOM killer sends); killed the engine's processes: "
        f"VLLM::EngineCore (pid {core.pid})")
    assert exit_code(core) == -signal.SIGKILL


def test_a_start_cut_short_that_goes_on_spawning_leaves_nothing_behind(reap):
    # vLLM's LLM() abandoned at the start bound may spawn its EngineCore only afterwards
    runner = VllmRunner("/nonexistent/tiny-llama", ServeConfig(), "cpu", model="tiny-llama", timeout_s=0.5)
    runner._tree = ProcessTree()
    spawned: list[subprocess.Popen] = []

    def slow_start() -> None:
        time.sleep(1.5)
        spawned.append(start_engine(SLEEPER))
        reap.append(spawned[0])
        spawned[0].join()  # as vLLM waits for its engine: until the process is gone
        raise RuntimeError("Engine core initialization failed")

    with pytest.raises(EngineFailure) as info:
        runner._bounded("start", slow_start)
    assert re.match(r"the device engine of tiny-llama failed during start after 0\.\d s: no answer within 0.5 s; "
                    rf"killed the engine's processes: \S+ \(pid {spawned[0].pid}\)$", str(info.value)), str(info.value)
    assert exit_code(spawned[0]) == -signal.SIGKILL
    assert [t for t in threading.enumerate() if t.name == "npuprec-engine-start"] == []  # the call ended too


def test_an_error_of_the_call_with_the_engine_alive_is_not_an_engine_failure(reap):
    runner, core, worker = runner_with_fake_engine(reap, timeout_s=600)
    with pytest.raises(ValueError, match="prompt too long"):
        runner._bounded("generate", lambda: (_ for _ in ()).throw(ValueError("prompt too long")))
    assert core.is_alive() and worker.is_alive()  # still serving; __exit__ closes it as usual
    runner.close()
    assert exit_code(core) == -signal.SIGKILL and exit_code(worker) == -signal.SIGKILL


def test_engine_faults_parse_with_a_forward_pass_count_and_an_optional_model():
    assert Fault.parse("engine_kill") == Fault("engine_kill", 0)
    assert Fault.parse("engine_hang=3") == Fault("engine_hang", 3.0)
    scoped = Fault.parse("engine_kill@tiny-llama")
    assert scoped.applies_to("tiny-llama") and not scoped.applies_to("tiny-llama-next")
    assert Fault.parse("rope_theta").applies_to("any-model")
    with pytest.raises(ValueError, match="expected a model name after '@'"):
        Fault.parse("engine_kill@")
    with pytest.raises(ValueError, match="engine_kill, engine_hang"):
        Fault.parse("engine_explode")


FORWARD_TWICE = """
import torch
from pytest_npuprec.runners.vllm_worker import FAULTS
model = torch.nn.Linear(2, 2)
print(FAULTS[{name!r}](model, {after}), flush=True)
model(torch.zeros(1, 2)); print("pass 1 done", flush=True)
model(torch.zeros(1, 2)); print("pass 2 done", flush=True)
"""


def test_engine_kill_sigkills_the_process_at_the_chosen_forward_pass():
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", FORWARD_TWICE.format(name="engine_kill", after=1)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert out.stdout.splitlines()[1:] == ["pass 1 done"]
    assert out.stdout.startswith("forward pass 2 from now SIGKILLs the worker process")


def test_engine_hang_never_returns_from_the_chosen_forward_pass():
    pytest.importorskip("torch")
    proc = subprocess.Popen([sys.executable, "-c", FORWARD_TWICE.format(name="engine_hang", after=0)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("forward pass 1 from now never returns")
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        proc.kill()
        rest = proc.communicate(timeout=10)[0]
    assert "pass 1 done" not in rest


class SlowShutdownLLM:
    """An LLM whose engine takes `seconds` to shut down, as vLLM's waits for its EngineCore to exit."""

    def __init__(self, seconds: float, done: list):
        core = type("Core", (), {"shutdown": lambda _: (time.sleep(seconds), done.append(time.monotonic()))})()
        self.llm_engine = type("Engine", (), {"engine_core": core})()


def test_a_background_close_returns_at_once_and_the_next_engine_waits_for_it(reap, monkeypatch):
    from pytest_npuprec.runners import device

    runner, core, worker = runner_with_fake_engine(reap, timeout_s=600)
    runner.close_in_background, done = True, []
    runner.llm = SlowShutdownLLM(1.5, done)
    started = time.monotonic()
    runner.__exit__(None, None, None)
    assert time.monotonic() - started < 1.0 and runner.llm is None and runner._tree is None
    assert core.is_alive() and worker.is_alive()  # still shutting down, in the background

    # the next engine's start first waits for it: two engines are never resident at once
    monkeypatch.setattr(device, "temporary_env", lambda env: (_ for _ in ()).throw(RuntimeError("started")))
    with pytest.raises(RuntimeError, match="started"):
        VllmRunner("/nonexistent/tiny-llama", ServeConfig(), "npu").__enter__()
    assert done and time.monotonic() - started >= 1.5
    assert exit_code(core) == -signal.SIGKILL and exit_code(worker) == -signal.SIGKILL  # killed after shutdown
    device.finish_closing()  # nothing left to wait for


def test_a_failed_block_closes_at_once_even_with_background_close(reap):
    from pytest_npuprec.runners import device

    runner, core, worker = runner_with_fake_engine(reap, timeout_s=600)
    runner.close_in_background, done = True, []
    runner.llm = SlowShutdownLLM(0.5, done)
    runner.__exit__(RuntimeError, RuntimeError("boom"), None)
    assert done and runner.llm is None  # shut down before __exit__ returned
    assert exit_code(core) == -signal.SIGKILL and exit_code(worker) == -signal.SIGKILL
    assert device._closing == []



def test_the_next_model_waits_for_the_last_engine_to_be_gone_before_it_loads_anything(reap, tmp_path):
    from pytest_npuprec.config.loader import load_config
    from pytest_npuprec.orchestrate import RunOptions, run_model

    runner, core, worker = runner_with_fake_engine(reap, timeout_s=600)
    runner.close_in_background, done = True, []
    runner.llm = SlowShutdownLLM(1.0, done)
    runner.__exit__(None, None, None)
    assert not done
    config = tmp_path / "m.yaml"
    config.write_text('model_name: "org/absent-model"\nprecision:\n  prompts: ["hi"]\n  max_tokens: 4\n'
                      '  thresholds: {cosine_similarity: {min: 0.99}}\n')
    result = run_model(load_config(config), RunOptions(device="cpu", model_roots=[tmp_path], report_dir=tmp_path / "r"))
    assert result.error is not None  # its weights are missing: it fails, but only after the engine was gone
    assert done and exit_code(core) == -signal.SIGKILL


class StuckTree:
    """A process tree one of whose processes SIGKILL does not end (stuck in the kernel, e.g. on a driver)."""

    def kill(self, wait_s=10.0):
        return ["VLLM::EngineCore (pid 4242)"], ["VLLM::EngineCore (pid 4242)"]


def test_processes_that_outlive_a_close_are_kept_for_the_report_not_dropped():
    from pytest_npuprec.runners import device

    assert device._shut_down([None], StuckTree(), True, "m1") == ["VLLM::EngineCore (pid 4242)"]
    runner = VllmRunner("/nonexistent/tiny-llama", ServeConfig(), "cpu", model="m2", close_in_background=True)
    runner._tree = StuckTree()
    runner.__exit__(None, None, None)  # the background close
    device.finish_closing()
    assert device.take_survivors() == [("m1", ["VLLM::EngineCore (pid 4242)"]), ("m2", ["VLLM::EngineCore (pid 4242)"])]
    assert device.take_survivors() == []
