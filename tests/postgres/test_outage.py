"""The database goes away while the service holds connections, then comes back.

Its own server (module scope), so stopping it disturbs no other test. Calls during
the outage must end with ``DatabaseUnavailable`` instead of hanging (each runs in a
thread joined with a deadline far beyond any wait the code allows); after the
restart the same objects work again, without being reopened.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from app.auth.pgstore import PostgresKeyStore
from app.core.types import FloatArray, NewFace
from app.errors import DatabaseUnavailable
from app.gallery.postgres import PostgresGallery
from app.storage.postgres import DatabaseOptions, open_database
from app.storage.postgres.database import Database
from tests.gallery.conftest import DIM, MODEL_ID
from tests.pgserver import PostgresServer
from tests.postgres.conftest import eventually

T = TypeVar("T")
UnitVectors = Callable[[int], FloatArray]
MakeFace = Callable[..., NewFace]
# A call still running after this is hanging, not waiting for the database.
HANG_S = 60.0


@pytest.fixture(scope="module")
def server(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """A server of this module's own (``postgres_server`` only makes sure one can run)."""
    own = PostgresServer({"fsync": "off"})
    try:
        yield own
    finally:
        own.destroy()


@pytest.fixture
def database(server: PostgresServer) -> Iterator[Database]:
    name = f"outage_{uuid.uuid4().hex[:12]}"
    opened = open_database(server.create_database(name), DatabaseOptions(timeout_s=1.0))
    yield opened
    opened.close()
    if not server.running:
        server.start()
    server.psql(f'DROP DATABASE "{name}" WITH (FORCE)')


def outcome(call: Callable[[], T]) -> T | BaseException:
    """What ``call`` returned or raised, failing the test if it hangs."""
    result: list[T | BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as error:
            result.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(HANG_S)
    assert not thread.is_alive(), f"the call hung for {HANG_S} s"
    return result[0]


def test_calls_fail_with_database_unavailable_then_work_again_after_a_restart(
    database: Database, server: PostgresServer, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    gallery = PostgresGallery(database, model_id=MODEL_ID, dim=DIM)
    alice = unit_vectors(1)[0]
    gallery.add_faces("c", "alice", [make_face(alice)])

    server.stop()
    calls: dict[str, Callable[[], object]] = {
        "search": lambda: gallery.search("c", alice[None, :], top_k=1),
        "enroll": lambda: gallery.add_faces("c", "bob", [make_face()]),
        "list": lambda: gallery.list_subjects("c", limit=10, offset=0),
        "delete": lambda: gallery.delete_subject("c", "alice"),
        "verify": lambda: gallery.best_match_for_subject("c", "alice", alice),
    }
    during = {name: outcome(call) for name, call in calls.items()}
    server.start()

    for name, error in during.items():
        assert isinstance(error, DatabaseUnavailable), (name, error)
        assert error.code == "database_unavailable"
        assert error.details["retry_after_s"] >= 1
        assert "127.0.0.1" not in error.message  # nothing about the network for clients
    recovered = eventually(
        lambda: _subjects(outcome(lambda: gallery.search("c", alice[None, :], top_k=1))),
        ["alice"],
    )
    assert recovered == ["alice"]  # the acknowledged face outlived the outage
    gallery.add_faces("c", "bob", [make_face()])
    assert eventually(gallery.stats, {"c": 2}) == {"c": 2}
    gallery.close()


def test_keys_are_refused_while_the_database_is_away_and_accepted_after(
    database: Database, server: PostgresServer
) -> None:
    keys = PostgresKeyStore(database)
    issued = keys.create(name="camera", collections=["lobby"], admin=False)
    assert keys.authenticate(issued.token) == issued.key

    server.stop()
    # Fail closed: a replica that cannot hear revocations vouches for no key.
    refused = eventually(
        lambda: _error_code(lambda: keys.authenticate(issued.token)), "database_unavailable"
    )
    server.start()

    assert refused == "database_unavailable"
    assert eventually(lambda: _error_code(lambda: keys.authenticate(issued.token)), None) is None
    assert keys.authenticate(issued.token) == issued.key
    keys.close()


def _subjects(result: object) -> list[str] | None:
    if isinstance(result, BaseException):
        return None
    assert isinstance(result, list)
    return [hit.subject for hit in result[0]]


def _error_code(call: Callable[[], object]) -> str | None:
    result = outcome(call)
    if isinstance(result, DatabaseUnavailable):
        return result.code
    if isinstance(result, BaseException):
        raise result
    return None
