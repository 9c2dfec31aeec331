"""Progress of a model's long phases, said as they start and end: a real model's run is minutes of reference load,
generation and scoring, engine start and graph capture, where pytest alone prints nothing.

The plugin sets the writer from pytest's terminal reporter (quiet under -q, absent in xdist workers, which have
no terminal); runners are wrapped, not changed: `announced(factory, model, side)` says each start, generate and
score, with a bar over the prompts of a runner that runs them one at a time anyway (the in-memory reference; one
call each then changes nothing it computes) when the output is a terminal; a batch is never split."""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator, Sequence

_writer: "Writer | None" = None


class Writer:
    """Lines (and, on a terminal, a bar redrawn in place) through pytest's terminal writer, with pytest's output
    capture suspended while writing (a model runs inside a test's call, where stdout is captured)."""

    def __init__(self, terminal: Any, capture: Any = None):
        self.terminal, self.capture = terminal, capture
        self.isatty = bool(getattr(getattr(terminal, "_tw", None), "isatty", lambda: False)())

    def _uncaptured(self) -> Any:
        disabled = getattr(self.capture, "global_and_fixture_disabled", None)
        return disabled() if disabled is not None else nullcontext()

    def line(self, text: str) -> None:
        with self._uncaptured():
            self.terminal.write_line(text)

    def bar(self, label: str, done: int, total: int) -> None:
        if not self.isatty:
            return
        width = 24
        filled = int(width * done / max(total, 1))
        with self._uncaptured():
            self.terminal.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", flush=True)
            if done == total:
                self.terminal.write("\r" + " " * (len(label) + width + 16) + "\r", flush=True)


def set_writer(writer: Writer | None) -> None:
    global _writer
    _writer = writer


@contextmanager
def phase(model: str, what: str) -> Iterator[None]:
    """`npuprec: <model>: <what> ...` now, `... <what>: 3.2 s` when it ends (`FAILED after` when it raised)."""
    if _writer is None:
        yield
        return
    _writer.line(f"npuprec: {model}: {what} ...")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        _writer.line(f"npuprec: {model}: {what}: FAILED after {time.monotonic() - started:.1f} s")
        raise
    _writer.line(f"npuprec: {model}: {what}: {time.monotonic() - started:.1f} s")


class _Announced:
    """A runner (capture/session.py's Runner) whose verbs say when they start and end."""

    def __init__(self, factory: Callable[[], ContextManager[Any]], model: str, side: str):
        self.factory, self.model, self.side = factory, model, side
        self.inner: Any = None
        self._entered: Any = None

    def __getattr__(self, name: str) -> Any:  # side, info, and whatever else the runner offers
        return getattr(self.inner, name)

    def __enter__(self) -> "_Announced":
        self._entered = self.factory()
        with phase(self.model, f"{self.side}: start"):
            self.inner = self._entered.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._entered.__exit__(*exc)

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, *args: Any, **kwargs: Any) -> Any:
        with phase(self.model, f"{self.side}: generate ({len(prompts)} prompts x {max_tokens} tokens)"):
            if not self._split(args, kwargs):
                return self.inner.generate(prompts, max_tokens, *args, **kwargs)
            out = []
            for done, prompt in enumerate(prompts, start=1):
                out += self.inner.generate([prompt], max_tokens)
                self._bar("generate", done, len(prompts))
            return out

    def score(self, requests: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        with phase(self.model, f"{self.side}: score ({len(requests)} sequences)"):
            if not self._split(args, kwargs):
                return self.inner.score(requests, *args, **kwargs)
            for done, request in enumerate(requests, start=1):
                self.inner.score([request])
                self._bar("score", done, len(requests))
            return None

    def _split(self, args: tuple, kwargs: dict) -> bool:
        # only a runner that says it handles prompts one by one anyway (TransformersRunner): a streamed reference
        # reads its weights once per call for all sequences, an engine batches them
        return (getattr(self.inner, "one_at_a_time", False) and not args and not kwargs and _writer is not None
                and _writer.isatty)

    def _bar(self, verb: str, done: int, total: int) -> None:
        if _writer is not None:
            _writer.bar(f"npuprec: {self.model}: {self.side}: {verb}", done, total)


def announced(factory: Callable[[], ContextManager[Any]], model: str, side: str) -> Callable[[], ContextManager[Any]]:
    """The factory, its runner announcing each verb; unchanged when nothing listens (xdist workers, -q, no pytest).
    A runner whose `one_at_a_time` is true (it runs prompts one by one anyway) gets a bar over them."""
    if _writer is None:
        return factory
    return lambda: _Announced(factory, model, side)

