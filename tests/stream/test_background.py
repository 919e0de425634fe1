"""Background recognition hand-over: one job in flight, outcomes kept for the next frame."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from app.stream.background import BackgroundRecognition
from app.stream.session import RecognitionJob, RecognitionOutcome


def job(tick: int) -> RecognitionJob:
    return RecognitionJob(
        image=np.zeros((2, 2, 3), np.uint8), tracked=(), tick=tick, gallery_epoch=0
    )


def test_one_job_in_flight_and_its_outcome_is_kept_for_the_next_collect() -> None:
    background = BackgroundRecognition()
    seen: list[int] = []

    async def scenario() -> None:
        started, release = anyio.Event(), anyio.Event()

        async def recognise(submitted: RecognitionJob) -> RecognitionOutcome:
            started.set()
            await release.wait()
            seen.append(submitted.tick)
            return RecognitionOutcome(submitted, ())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(background.serve, recognise)
            assert background.idle
            background.submit(job(1))
            assert not background.idle
            with pytest.raises(RuntimeError, match="in flight"):
                background.submit(job(2))
            await started.wait()
            # A frame collects while the job runs: nothing yet, and the outcome that
            # finishes afterwards must still reach the following collect.
            assert background.collect() == []
            release.set()
            while not background.idle:
                await anyio.sleep(0)
            (outcome,) = background.collect()
            assert outcome.job.tick == 1
            assert background.collect() == []
            tasks.cancel_scope.cancel()

    anyio.run(scenario)
    assert seen == [1]


def test_closing_the_stream_cancels_a_job_in_flight() -> None:
    background = BackgroundRecognition()
    cancelled: list[bool] = []

    async def scenario() -> None:
        started = anyio.Event()

        async def recognise(submitted: RecognitionJob) -> RecognitionOutcome:
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(True)
                raise
            return RecognitionOutcome(submitted, ())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(background.serve, recognise)
            background.submit(job(1))
            await started.wait()
            tasks.cancel_scope.cancel()

    anyio.run(scenario)
    assert cancelled == [True]
    assert background.collect() == []
