"""Worker threads whose every outcome a test asserts.

An exception inside a ``threading.Thread`` does not fail the test that started it:
the thread just stops (pytest reports a warning, which pyproject.toml turns into an
error, but only for exceptions nobody caught). ``Workers`` keeps each worker's
return value or exception, and ``join`` fails the test naming every worker that
raised or is still running, with its traceback, so one client stopping quietly
cannot hide behind the others that succeeded.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Outcome:
    name: str
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def describe(self) -> str:
        if not self.done.is_set():
            return f"{self.name}: still running"
        assert self.error is not None
        trace = "".join(traceback.format_exception(self.error))
        return f"{self.name} raised:\n{trace}"


class Workers:
    """``start`` threads, then ``join`` them all: their results, in start order."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._outcomes: list[_Outcome] = []

    def start(self, target: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        outcome = _Outcome(name or f"worker {len(self._outcomes)} ({target.__name__})")

        def run() -> None:
            try:
                outcome.result = target(*args)
            except BaseException as error:  # collected: join() fails the test with it
                outcome.error = error
            finally:
                outcome.done.set()

        thread = threading.Thread(target=run, name=outcome.name, daemon=True)
        self._outcomes.append(outcome)
        self._threads.append(thread)
        thread.start()

    def running(self) -> int:
        """Workers that have not finished yet (returned or raised)."""
        return sum(not outcome.done.is_set() for outcome in self._outcomes)

    def join(self, timeout_s: float) -> list[Any]:
        """Wait up to ``timeout_s`` in all; fail unless every worker returned normally."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        failed = [o for o in self._outcomes if not o.done.is_set() or o.error is not None]
        if failed:
            report = "\n".join(outcome.describe() for outcome in failed)
            raise AssertionError(
                f"{len(failed)} of {len(self._outcomes)} workers failed:\n{report}"
            )
        return [outcome.result for outcome in self._outcomes]
