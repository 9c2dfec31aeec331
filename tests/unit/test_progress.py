"""Progress lines of a model's long phases (progress.py), on fake runners and a fake terminal."""
from __future__ import annotations

import pytest

from pytest_npuprec import progress


class Terminal:
    def __init__(self, tty: bool):
        self.lines: list[str] = []
        self.raw: list[str] = []
        self._tw = type("TW", (), {"isatty": lambda _self: tty})()

    def write_line(self, text: str) -> None:
        self.lines.append(text)

    def write(self, text: str, flush: bool = False) -> None:
        self.raw.append(text)


class FakeRunner:
    side = "reference"
    one_at_a_time = False

    def __init__(self, calls: list):
        self.calls, self.info = calls, {"platform": "cpu"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def generate(self, prompts, max_tokens, logits_out=None):
        self.calls.append(("generate", len(prompts), logits_out))
        return [tuple(p) for p in prompts]

    def score(self, requests):
        self.calls.append(("score", len(requests)))


@pytest.fixture
def terminal(request):
    term = Terminal(tty=getattr(request, "param", False))
    progress.set_writer(progress.Writer(term))
    yield term
    progress.set_writer(None)


def test_each_verb_is_said_when_it_starts_and_ends(terminal):
    calls = []
    factory = progress.announced(lambda: FakeRunner(calls), "toy", "device")
    with factory() as dev:
        assert dev.generate([[1, 2], [3]], 4, logits_out=["a", "b"]) == [(1, 2), (3,)]
        dev.score([object()] * 3)
        assert dev.info == {"platform": "cpu"}  # the runner's own attributes pass through
    assert calls == [("generate", 2, ["a", "b"]), ("score", 3)]  # the device's batch is never split
    assert [line.split(": ", 3)[3] for line in terminal.lines[::2]] == [
        "start ...", "generate (2 prompts x 4 tokens) ...", "score (3 sequences) ..."]
    assert all(line.startswith("npuprec: toy: device: ") and line.endswith(" s") for line in terminal.lines[1::2])
    assert terminal.raw == []  # no terminal: no bar


@pytest.mark.parametrize("terminal", [True], indirect=True)
def test_a_terminal_gets_a_bar_over_the_reference_prompts(terminal):
    calls = []
    runner = FakeRunner(calls)
    runner.one_at_a_time = True  # as the in-memory reference says of itself
    with progress.announced(lambda: runner, "toy", "reference")() as ref:
        assert ref.generate([[1], [2], [3]], 2) == [(1,), (2,), (3,)]
        ref.score([object()] * 2)
    assert calls == [("generate", 1, None)] * 3 + [("score", 1)] * 2
    assert any("[################........] 2/3" in raw for raw in terminal.raw), terminal.raw


def test_a_failing_phase_says_so_and_raises(terminal):
    with pytest.raises(RuntimeError, match="boom"):
        with progress.phase("toy", "measure"):
            raise RuntimeError("boom")
    assert terminal.lines[0] == "npuprec: toy: measure ..."
    assert terminal.lines[1].startswith("npuprec: toy: measure: FAILED after ")


def test_nothing_listens_nothing_is_wrapped():
    progress.set_writer(None)

    def factory():
        return FakeRunner([])

    assert progress.announced(factory, "toy", "device") is factory
    with progress.phase("toy", "measure"):
        pass


def test_quiet_runs_print_no_progress(pytester):
    pytester.makepyfile("""
        from pytest_npuprec import progress

        def test_writer():
            print("WRITER", progress._writer is not None)
    """)
    assert "WRITER True" in pytester.runpytest_subprocess("-s").stdout.str()
    assert "WRITER False" in pytester.runpytest_subprocess("-s", "-q").stdout.str()


def test_progress_is_seen_while_a_test_runs_under_output_capture(pytester):
    """A model runs inside a test's call, where pytest captures stdout: the lines must reach the terminal anyway."""
    pytester.makepyfile("""
        from pytest_npuprec import progress

        def test_phase():
            with progress.phase("toy", "device: start"):
                print("CAPTURED")
    """)
    out = pytester.runpytest_subprocess().stdout.str()  # default capture (fd)
    assert "npuprec: toy: device: start ..." in out and "npuprec: toy: device: start: " in out
    assert "CAPTURED" not in out  # the test's own output stays captured
