"""Cross-request micro-batching for the recognizer.

Every thread that needs embeddings (HTTP requests, live streams) calls
``BatchingEmbedder.embed`` and blocks; a runner thread takes the queued requests,
runs them as one batch and hands each caller its own rows. ``runners`` threads do
this at once, one per session stream (default 1: a lone face gets every core; on a
busy CPU two single-threaded runners embed more faces a second; on a GPU one runner
with big batches is what pays). A batch starts as soon as a runner is free: it
holds what is already queued (at most ``max_batch`` faces) and waits at most
``max_wait_s`` for more. With ``max_wait_s = 0`` a lone request never waits; under
load, requests that arrive while a batch runs form the next one, so batches grow
with the load by themselves (what a GPU needs) and latency at low load is unchanged.

A request larger than ``max_batch`` runs alone; the embedder splits it by the
manifest's own batch limit. Batching never changes a face's embedding beyond
float rounding: the recognizer's rows are independent (tested).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.core.types import FloatArray, ImageArray
from app.errors import ServerBusy

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    dim: int

    def embed(self, aligned_faces: ImageArray) -> FloatArray: ...


@dataclass(slots=True)
class _Request:
    faces: ImageArray
    result: Future[FloatArray] = field(default_factory=Future)


BatchObserver = Callable[[int, int], None]  # (faces in the batch, requests in it)


def _closed_error() -> ServerBusy:
    return ServerBusy("the recognizer is shutting down; retry on another replica", retry_after_s=1)


class BatchingEmbedder:
    """An ``Embedder`` that batches concurrent callers onto one inner embedder."""

    def __init__(
        self,
        inner: Embedder,
        *,
        max_batch: int,
        max_wait_s: float = 0.0,
        observe: BatchObserver | None = None,
        runners: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if runners < 1:
            raise ValueError(f"runners must be at least 1, got {runners}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self.inner = inner
        self.dim = inner.dim
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._observe = observe
        self._pending: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._runners = [
            threading.Thread(target=self._run, name=f"recognizer-batcher-{n}", daemon=True)
            for n in range(runners)
        ]
        for runner in self._runners:
            runner.start()

    def embed(self, aligned_faces: ImageArray) -> FloatArray:
        """(N, H, W, 3) crops -> (N, dim) embeddings; blocks until its batch has run."""
        if aligned_faces.shape[0] == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        request = _Request(aligned_faces)
        with self._ready:
            if self._closed:
                raise _closed_error()
            self._pending.append(request)
            self._ready.notify()
        return request.result.result()

    def close(self) -> None:
        """Stop the runners; requests still queued fail with ``ServerBusy`` (503)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for runner in self._runners:
            runner.join()

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._execute(batch)
        finally:  # however a runner ends, nobody is left waiting, and the others stop
            with self._ready:
                self._closed = True
                self._ready.notify_all()
                for request in self._pending:
                    request.result.set_exception(_closed_error())
                self._pending.clear()

    def _next_batch(self) -> list[_Request] | None:
        with self._ready:
            while not self._pending and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            batch = [self._pending.popleft()]
            faces = batch[0].faces.shape[0]
            deadline = time.monotonic() + self.max_wait_s
            while faces < self.max_batch:
                if self._pending:
                    if faces + self._pending[0].faces.shape[0] > self.max_batch:
                        break
                    request = self._pending.popleft()
                    batch.append(request)
                    faces += request.faces.shape[0]
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._ready.wait(remaining)
            return batch

    def _execute(self, batch: list[_Request]) -> None:
        sizes = [request.faces.shape[0] for request in batch]
        try:
            faces = (
                batch[0].faces
                if len(batch) == 1
                else np.concatenate([request.faces for request in batch])
            )
            embeddings = self.inner.embed(faces)
        except Exception as exc:  # every caller of the batch gets the error
            for request in batch:
                request.result.set_exception(exc)
            return
        if self._observe is not None:
            self._observe(sum(sizes), len(batch))
        start = 0
        for request, size in zip(batch, sizes, strict=True):
            request.result.set_result(embeddings[start : start + size])
            start += size
