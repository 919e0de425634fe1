"""The edge's admission gate (per-key share) and fair inference turns, in isolation."""

from __future__ import annotations

import anyio
import pytest

from app.api.limits import Admission, AdmissionGate, FairTurns


def test_the_gate_admits_up_to_capacity_and_each_tenant_up_to_its_share() -> None:
    gate = AdmissionGate(3, per_tenant=2)
    assert [gate.try_enter("a") for _ in range(3)] == [
        Admission.ADMITTED,
        Admission.ADMITTED,
        Admission.TENANT_FULL,
    ]
    assert gate.try_enter("b") is Admission.ADMITTED
    assert gate.try_enter("c") is Admission.BUSY
    gate.leave("a")
    assert gate.held_by("a") == 1
    assert gate.try_enter("c") is Admission.ADMITTED
    for tenant in ("a", "b", "c"):
        gate.leave(tenant)
    assert (gate.in_use, gate.held_by("a"), gate._held) == (0, 0, {})


def test_without_a_tenant_only_the_capacity_counts() -> None:
    gate = AdmissionGate(2, per_tenant=1)
    assert [gate.try_enter(None) for _ in range(3)] == [
        Admission.ADMITTED,
        Admission.ADMITTED,
        Admission.BUSY,
    ]


@pytest.mark.parametrize("capacity", [0, -1])
def test_a_gate_or_turns_need_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        AdmissionGate(capacity)
    with pytest.raises(ValueError, match="capacity"):
        FairTurns(capacity)


def _serve_in_order(arrivals: list[str], capacity: int = 1) -> list[str]:
    """Queue one turn per arrival (in order) behind a held turn; the order they ran."""
    turns = FairTurns(capacity)
    ran: list[str] = []

    async def scenario() -> None:
        hold = anyio.Event()
        held = anyio.Event()

        async def holder() -> None:
            async with turns.turn("holder"):
                held.set()
                await hold.wait()

        async def job(tenant: str, queued: anyio.Event) -> None:
            queued.set()
            async with turns.turn(tenant):
                ran.append(tenant)
                await anyio.sleep(0)

        async with anyio.create_task_group() as group:
            group.start_soon(holder)
            await held.wait()
            for tenant in arrivals:
                queued = anyio.Event()
                group.start_soon(job, tenant, queued)
                await queued.wait()
                await anyio.sleep(0)  # let it reach the queue
            assert turns.waiting == len(arrivals)
            hold.set()
        assert (turns.active, turns.waiting) == (0, 0)

    anyio.run(scenario)
    return ran


def test_turns_rotate_between_tenants_instead_of_first_come_first_served() -> None:
    # Tenant a queued five turns before b and c queued one each.
    assert _serve_in_order(["a", "a", "a", "a", "a", "b", "c"]) == [
        "a",
        "b",
        "c",
        "a",
        "a",
        "a",
        "a",
    ]


def test_one_tenant_alone_is_served_in_arrival_order() -> None:
    assert _serve_in_order(["a", "a", "a"]) == ["a", "a", "a"]


def test_a_waiter_cancelled_in_the_queue_gives_up_its_place() -> None:
    turns = FairTurns(1)
    ran: list[str] = []

    async def scenario() -> None:
        hold = anyio.Event()
        held = anyio.Event()

        async def holder() -> None:
            async with turns.turn("h"):
                held.set()
                await hold.wait()

        async def job(tenant: str) -> None:
            async with turns.turn(tenant):
                ran.append(tenant)

        async with anyio.create_task_group() as group:
            group.start_soon(holder)
            await held.wait()
            with anyio.CancelScope() as doomed:
                doomed.cancel()
                await job("cancelled")  # cancelled while waiting
            group.start_soon(job, "b")
            await anyio.sleep(0.01)
            assert turns.waiting == 1
            hold.set()
        assert (turns.active, turns.waiting) == (0, 0)

    anyio.run(scenario)
    assert ran == ["b"]
