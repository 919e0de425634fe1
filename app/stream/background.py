"""Recognition off the answer path: one stream's recognition jobs, one in flight at most.

The worker answers a frame right after detection and tracking, then ``submit``s
the frame's ``RecognitionJob`` when the recogniser is ``idle``; the recogniser
task (``serve``) runs it through the same inference path as frames, and keeps its
outcome until the worker ``collect``s it for the next frame, which folds it into
the track's votes. A new name therefore shows on the first frame processed after
its recognition finished, and no answer waits for the recognizer.

Used from one event loop only (no locks needed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from app.stream.session import RecognitionJob, RecognitionOutcome


class BackgroundRecognition:
    def __init__(self) -> None:
        self._job: RecognitionJob | None = None
        self._busy = False  # a job submitted and its outcome not produced yet
        self._finished: list[RecognitionOutcome] = []
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
                # Appended after the await: ``collect`` may have swapped the list meanwhile.
                self._finished.append(outcome)
            finally:
                self._busy = False
