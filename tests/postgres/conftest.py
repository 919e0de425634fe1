"""Fixtures for the PostgreSQL-only tests: galleries and key stores opened on one database,
as several replicas would, and helpers that wait for a replica to hear of a change."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from app.gallery.postgres import PostgresGallery
from app.storage.postgres import DatabaseOptions, open_database
from app.storage.postgres.database import Database
from tests.gallery.conftest import DIM, MODEL_ID, make_face, near, rng, unit_vectors  # noqa: F401 (fixtures)

T = TypeVar("T")
# A replica hears of another's change within milliseconds; this long means never.
PROPAGATION_TIMEOUT_S = 30.0
OpenDatabase = Callable[..., Database]
OpenReplica = Callable[..., PostgresGallery]


def eventually(probe: Callable[[], T], expected: T, timeout_s: float = PROPAGATION_TIMEOUT_S) -> T:
    """Poll ``probe`` until it returns ``expected``; returns the last value seen.

    For what a replica learns asynchronously (NOTIFY): the caller asserts on the
    value, so a change that never arrives fails the test with what was seen.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


@pytest.fixture
def open_db(postgres_url: str) -> Iterator[OpenDatabase]:
    """``open_db(**options)``: a process's Database on the test's database; closed at the end."""
    opened: list[Database] = []

    def open_(url: str = postgres_url, **options: object) -> Database:
        database = open_database(url, DatabaseOptions(**options))  # type: ignore[arg-type]
        opened.append(database)
        return database

    yield open_
    for database in reversed(opened):
        database.close()


@pytest.fixture
def open_replica(open_db: OpenDatabase) -> Iterator[OpenReplica]:
    """``open_replica()``: a gallery with its own pool and listener, like one more replica."""
    opened: list[PostgresGallery] = []

    def open_(*, model_id: str = MODEL_ID, dim: int = DIM, **options: object) -> PostgresGallery:
        gallery = PostgresGallery(open_db(**options), model_id=model_id, dim=dim)
        opened.append(gallery)
        return gallery

    yield open_
    for gallery in opened:
        gallery.close()
