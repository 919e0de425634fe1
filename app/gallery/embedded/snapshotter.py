"""When to take index snapshots, and a background thread that takes them.

Writing a snapshot of a million faces takes seconds (2 GB of vectors), and writes to
the gallery wait meanwhile (searches do not), so snapshots are taken in the
background, after enough changes and not too often; and once more at close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """Snapshot a gallery of at least ``min_faces`` after ``every_changes`` faces were
    added or deleted, at most once every ``min_interval_s``; and at close if it changed.

    Smaller galleries rebuild from SQLite in well under a second and write none.
    The interval keeps a long import from rewriting gigabytes every few seconds; the
    changes bound what a restart after ``kill -9`` must catch up.
    """

    min_faces: int = 20_000
    every_changes: int = 10_000
    min_interval_s: float = 300.0

    def __post_init__(self) -> None:
        if self.min_faces < 0 or self.every_changes < 1 or self.min_interval_s < 0:
            raise ValueError(
                "min_faces and min_interval_s must not be negative, every_changes positive"
            )


DEFAULT_SNAPSHOT_POLICY = SnapshotPolicy()


class SnapshotThread:
    """Runs ``take`` in a daemon thread each time ``request`` is called (coalesced),
    no sooner than ``min_interval_s`` after the previous run. Failures are logged."""

    def __init__(self, take: Callable[[], None], *, min_interval_s: float) -> None:
        self._take = take
        self._min_interval_s = min_interval_s
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._last_run = float("-inf")  # the first request runs at once
        self._thread = threading.Thread(target=self._run, name="gallery-snapshot", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        """Stop the thread; waits for a snapshot in progress to finish."""
        self._stopping.set()
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping.is_set():
                return
            wait = self._last_run + self._min_interval_s - time.monotonic()
            if wait > 0 and self._stopping.wait(wait):
                return
            self._wanted.clear()
            try:
                self._take()
            except Exception:
                logger.exception("index snapshot failed; the next one will be retried")
            self._last_run = time.monotonic()
