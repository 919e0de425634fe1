"""Recognition off the answer path: one stream's recognition jobs, one in flight at most.

The worker answers a frame right after detection and tracking, then ``submit``s
the frame's ``RecognitionJob`` when the recogniser is ``idle``; the recogniser
task (``serve``) runs it through the same inference path as frames, and keeps its
outcome until the worker ``collect``s it for the next frame, which folds it into
the track's votes. A new name therefore shows on the first frame processed after
its recognition finished, and no answer waits for the recognizer.

``submit`` and ``serve`` run on one event loop; ``collect`` and ``idle`` may also
be called from the worker thread that processes the next frame, at the moment it
starts (so a recognition that finished while the frame waited for an inference
worker is folded into that very frame): the hand-over list has a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import anyio

from app.stream.session import RecognitionJob, RecognitionOutcome


class BackgroundRecognition:
    def __init__(self) -> None:
        self._job: RecognitionJob | None = None
        self._busy = False  # a job submitted and its outcome not produced yet
        self._finished: list[RecognitionOutcome] = []
        self._lock = threading.Lock()
        self._wakeup = anyio.Event()

    @property
    def idle(self) -> bool:
        """True when a job may be submitted."""
        return not self._busy

    def submit(self, job: RecognitionJob) -> None:
        if self._busy:
            raise RuntimeError("a recognition is already in flight; submit when idle")
        self._job, self._busy = job, True
        self._wakeup.set()

    def collect(self) -> list[RecognitionOutcome]:
        """The outcomes finished since the previous call, oldest first."""
        with self._lock:
            finished, self._finished = self._finished, []
        return finished

    async def serve(
        self, recognise: Callable[[RecognitionJob], Awaitable[RecognitionOutcome]]
    ) -> None:
        """Run the submitted jobs one at a time, until cancelled (the stream closes)."""
        while True:
            while self._job is None:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            job, self._job = self._job, None
            try:
                outcome = await recognise(job)
                with self._lock:
                    self._finished.append(outcome)
            finally:
                self._busy = False
