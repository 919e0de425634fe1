"""Latest-frame-wins hand-over between a socket's reader and its worker."""

from __future__ import annotations

import anyio
import pytest

from app.stream.mailbox import MAX_LISTED_DROPS, Delivery, Frame, LatestFrameMailbox


def frame(index: int) -> Frame:
    return Frame(index=index, data=b"", received_at=0.0)


def take(mailbox: LatestFrameMailbox) -> Delivery | None:
    return anyio.run(mailbox.take)


def test_the_newest_frame_wins_and_the_others_are_reported_dropped() -> None:
    mailbox = LatestFrameMailbox()
    for index in range(4):
        mailbox.put(frame(index))
    delivery = take(mailbox)
    assert delivery is not None
    assert delivery.frame.index == 3
    assert delivery.dropped == [0, 1, 2]
    assert delivery.dropped_count == 3


def test_drops_are_reported_once() -> None:
    mailbox = LatestFrameMailbox()
    mailbox.put(frame(0))
    mailbox.put(frame(1))
    take(mailbox)
    mailbox.put(frame(2))
    delivery = take(mailbox)
    assert delivery is not None
    assert (delivery.frame.index, delivery.dropped, delivery.dropped_count) == (2, [], 0)


def test_the_listed_drops_are_capped_but_the_count_is_exact() -> None:
    mailbox = LatestFrameMailbox()
    total = MAX_LISTED_DROPS + 50
    for index in range(total + 1):
        mailbox.put(frame(index))
    delivery = take(mailbox)
    assert delivery is not None
    assert delivery.dropped == list(range(MAX_LISTED_DROPS))
    assert delivery.dropped_count == total


def test_take_waits_for_a_frame() -> None:
    async def scenario() -> Delivery | None:
        mailbox = LatestFrameMailbox()
        async with anyio.create_task_group() as tasks:

            async def later() -> None:
                await anyio.sleep(0)
                mailbox.put(frame(7))

            tasks.start_soon(later)
            return await mailbox.take()

    delivery = anyio.run(scenario)
    assert delivery is not None
    assert delivery.frame.index == 7


def test_close_delivers_the_pending_frame_then_ends() -> None:
    mailbox = LatestFrameMailbox()
    mailbox.put(frame(0))
    mailbox.close()
    first = take(mailbox)
    assert first is not None
    assert first.frame.index == 0
    assert take(mailbox) is None


@pytest.mark.parametrize("pending", [False, True])
def test_close_wakes_a_waiting_take(pending: bool) -> None:
    async def scenario() -> Delivery | None:
        mailbox = LatestFrameMailbox()
        async with anyio.create_task_group() as tasks:

            async def close() -> None:
                await anyio.sleep(0)
                if pending:
                    mailbox.put(frame(1))
                mailbox.close()

            tasks.start_soon(close)
            return await mailbox.take()

    delivery = anyio.run(scenario)
    assert (delivery is not None) == pending


def test_ready_then_take_now_hands_over_the_newest_frame() -> None:
    mailbox = LatestFrameMailbox()
    with pytest.raises(RuntimeError, match="pending"):
        mailbox.take_now()
    mailbox.put(frame(0))
    mailbox.put(frame(1))
    assert anyio.run(mailbox.ready) is True
    delivery = mailbox.take_now()
    assert (delivery.frame.index, delivery.dropped) == (1, [0])
    mailbox.close()
    assert anyio.run(mailbox.ready) is False
