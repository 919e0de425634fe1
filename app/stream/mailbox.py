"""Latest frame wins: the hand-over between a socket's reader and its worker.

The reader ``put``s every frame it receives; the worker ``take``s the newest one
when it is free. A frame still waiting when a newer one arrives is dropped, and
its index is reported with the next frame taken. Latency then stays bounded by
about two frame-processing times instead of growing with a queue.

Used from one event loop only (no locks needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

# The answer lists at most this many dropped indices (the count is always exact):
# a client flooding tiny frames must not grow the answers without bound.
MAX_LISTED_DROPS = 256


@dataclass(frozen=True, slots=True)
class Frame:
    index: int  # 0-based, in the order the client sent them
    data: bytes
    received_at: float  # time.perf_counter() when the server received it


@dataclass(frozen=True, slots=True)
class Delivery:
    frame: Frame
    dropped: list[int]  # indices dropped since the previous delivery, oldest first
    dropped_count: int  # exact, even when ``dropped`` is truncated


class LatestFrameMailbox:
    def __init__(self) -> None:
        self._pending: Frame | None = None
        self._dropped: list[int] = []
        self._dropped_count = 0
        self._closed = False
        self._wakeup = anyio.Event()

    def put(self, frame: Frame) -> None:
        if self._pending is not None:
            self._dropped_count += 1
            if len(self._dropped) < MAX_LISTED_DROPS:
                self._dropped.append(self._pending.index)
        self._pending = frame
        self._wakeup.set()

    def close(self) -> None:
        """No more frames: a waiting ``take`` returns None once the pending frame is taken."""
        self._closed = True
        self._wakeup.set()

    async def ready(self) -> bool:
        """Wait for a frame: True when one is pending, False when closed and empty."""
        while self._pending is None:
            if self._closed:
                return False
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return True

    def take_now(self) -> Delivery:
        """The newest frame with the drops since the previous one (after ``ready``)."""
        if self._pending is None:
            raise RuntimeError("no frame is pending; await ready() first")
        delivery = Delivery(self._pending, self._dropped, self._dropped_count)
        self._pending, self._dropped, self._dropped_count = None, [], 0
        return delivery

    async def take(self) -> Delivery | None:
        """The newest frame with the drops since the previous one; None when closed and empty."""
        return self.take_now() if await self.ready() else None
