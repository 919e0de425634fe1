"""One background thread running jobs in order (the gallery's index rebuilds)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Worker:
    """A daemon thread that runs submitted jobs one after another; failures are logged."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._stopped = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (and nothing queued) once the worker is stopping."""
        with self._lock:
            if self._stopped:
                return False
            self._unfinished += 1
        self._jobs.put(job)
        return True

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted job has run; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout=timeout_s)

    def stop(self) -> None:
        """Run the jobs already queued, then end the thread (waits for it)."""
        with self._lock:
            self._stopped = True
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                logger.exception("background gallery job failed")
            finally:
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()
