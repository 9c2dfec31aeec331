"""Run one function per sequence in threads that take turns at every streamed unit, so each unit's weights are
loaded once, run by every sequence in order, then dropped. Only one thread computes at a time, and each runs its
sequence alone, exactly as the in-memory reference does (no padding, no batching to perturb the numbers)."""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence


class _Aborted(Exception):
    """Another sequence failed: this one stops at its next turn."""


class Lockstep:
    """`run(fns)` calls each fn in its own thread; `after_unit()`, called at the end of each unit by the running
    thread, hands the turn to the next sequence still running."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._local = threading.local()
        self._active: list[int] = []
        self._turn = 0
        self._error: BaseException | None = None
        self.sequences = 1

    def after_unit(self) -> None:
        index = getattr(self._local, "index", None)
        if index is None or len(self._active) < 2:
            return
        with self._cond:
            self._turn = self._active[(self._active.index(index) + 1) % len(self._active)]
            self._cond.notify_all()
            self._wait(index)

    def _wait(self, index: int) -> None:
        self._cond.wait_for(lambda: self._turn == index or self._error is not None)
        if self._error is not None:
            raise _Aborted()

    def run(self, fns: Sequence[Callable[[], Any]]) -> list[Any]:
        results: list[Any] = [None] * len(fns)
        self._active, self._turn, self._error, self.sequences = list(range(len(fns))), 0, None, len(fns)

        def body(index: int) -> None:
            self._local.index = index
            try:
                with self._cond:
                    self._wait(index)
                results[index] = fns[index]()
            except _Aborted:
                pass
            except BaseException as exc:  # handed to the caller's thread below
                with self._cond:
                    self._error = self._error or exc
            finally:
                with self._cond:
                    position = self._active.index(index)
                    self._active.remove(index)
                    if self._active:
                        self._turn = self._active[position % len(self._active)]
                    self._cond.notify_all()

        started: list[threading.Thread] = []
        try:
            for i in range(len(fns)):
                thread = threading.Thread(target=body, args=(i,), name=f"npuprec-stream-{i}")
                thread.start()
                started.append(thread)
        except BaseException as exc:  # e.g. no thread could be started: the started ones stop at their next turn
            with self._cond:
                self._error = self._error or exc
                self._cond.notify_all()
        finally:
            for thread in started:
                thread.join()
            self._active, self.sequences = [], 1
        if self._error is not None:
            raise self._error
        return results
