"""The readers-writer lock: shared readers, exclusive writers, writers first."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from app.gallery.embedded.rwlock import ReadWriteLock

# Long enough for a thread that should get in to get in; only paid when a test fails
# (or, in the negative checks, once per check).
WAIT_S = 2.0
BLOCKED_S = 0.1


def start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_readers_hold_the_lock_together() -> None:
    lock = ReadWriteLock()
    readers = 4
    all_inside = threading.Barrier(readers, timeout=WAIT_S)

    def read() -> None:
        with lock.read():
            all_inside.wait()  # breaks (and the test fails) unless all are inside at once

    threads = [start(read) for _ in range(readers)]
    for thread in threads:
        thread.join(WAIT_S)
    assert not all_inside.broken


def test_writer_waits_for_readers_to_leave() -> None:
    lock = ReadWriteLock()
    writer_in = threading.Event()
    lock.acquire_read()

    def write() -> None:
        with lock.write():
            writer_in.set()

    thread = start(write)
    assert not writer_in.wait(BLOCKED_S)
    lock.release_read()
    assert writer_in.wait(WAIT_S)
    thread.join(WAIT_S)


def test_writer_excludes_readers_and_other_writers() -> None:
    lock = ReadWriteLock()
    reader_in, second_writer_in = threading.Event(), threading.Event()
    lock.acquire_write()

    def read() -> None:
        with lock.read():
            reader_in.set()

    def write() -> None:
        with lock.write():
            second_writer_in.set()

    threads = [start(read), start(write)]
    assert not reader_in.wait(BLOCKED_S)
    assert not second_writer_in.is_set()
    lock.release_write()
    assert reader_in.wait(WAIT_S)
    assert second_writer_in.wait(WAIT_S)
    for thread in threads:
        thread.join(WAIT_S)


def test_waiting_writer_goes_before_new_readers() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    lock.acquire_read()

    def write() -> None:
        with lock.write():
            order.append("writer")

    def read() -> None:
        with lock.read():
            order.append("late reader")

    writer = start(write)
    _wait_until(lambda: lock._waiting_writers == 1)  # queued behind the first reader
    late_reader = start(read)
    assert not _finished(late_reader, BLOCKED_S)  # queued behind the writer
    lock.release_read()
    writer.join(WAIT_S)
    late_reader.join(WAIT_S)
    assert order == ["writer", "late reader"]


def test_lock_is_released_when_the_block_raises() -> None:
    lock = ReadWriteLock()
    with pytest.raises(ValueError, match="boom"), lock.write():
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"), lock.read():
        raise ValueError("boom")
    with lock.write():  # neither mode is still held
        pass


@pytest.mark.parametrize("release", ["release_read", "release_write"])
def test_release_without_acquire_raises(release: str) -> None:
    with pytest.raises(RuntimeError, match="without a matching"):
        getattr(ReadWriteLock(), release)()


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


def _finished(thread: threading.Thread, timeout: float) -> bool:
    thread.join(timeout)
    return not thread.is_alive()
