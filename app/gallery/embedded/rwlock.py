"""A small writer-preferring readers-writer lock.

Many readers may hold the lock at once; a writer holds it alone. As soon as a
writer is waiting, new readers queue behind it, so a steady stream of searches
cannot starve enrolments. The lock is not reentrant: a thread that already
holds it (in either mode) must not acquire it again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Shared (read) / exclusive (write) lock; writers take precedence."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._active_readers = 0
        self._waiting_writers = 0
        self._writer_active = False

    def acquire_read(self) -> None:
        with self._condition:
            while self._writer_active or self._waiting_writers:
                self._condition.wait()
            self._active_readers += 1

    def release_read(self) -> None:
        with self._condition:
            if self._active_readers == 0:
                raise RuntimeError("release_read() called without a matching acquire_read()")
            self._active_readers -= 1
            if self._active_readers == 0:
                self._condition.notify_all()

    def acquire_write(self) -> None:
        with self._condition:
            self._waiting_writers += 1
            try:
                while self._writer_active or self._active_readers:
                    self._condition.wait()
            except BaseException:
                # Interrupted while queued: readers held back by us may go now.
                self._waiting_writers -= 1
                self._condition.notify_all()
                raise
            self._waiting_writers -= 1
            self._writer_active = True

    def release_write(self) -> None:
        with self._condition:
            if not self._writer_active:
                raise RuntimeError("release_write() called without a matching acquire_write()")
            self._writer_active = False
            self._condition.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the duration of the ``with`` block."""
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively for the duration of the ``with`` block."""
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()
