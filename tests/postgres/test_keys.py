"""API keys shared by replicas: what one creates or revokes holds on all.

Each replica authenticates from memory, so a change reaches the others by NOTIFY:
the tests wait (bounded) for it and so prove the invalidation, for changes made by a
replica and by an operator in psql.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from app.auth.keys import IssuedKey
from app.auth.pgstore import PostgresKeyStore
from app.errors import LastAdminKey
from tests.postgres.conftest import OpenDatabase, eventually

STARTERS = 6
TIMEOUT_S = 60
OpenKeyStore = Callable[[], PostgresKeyStore]


@pytest.fixture
def open_keys(open_db: OpenDatabase) -> Iterator[OpenKeyStore]:
    """``open_keys()``: one more replica's key store (its own pool and listener)."""
    opened: list[PostgresKeyStore] = []

    def open_() -> PostgresKeyStore:
        store = PostgresKeyStore(open_db())
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def test_a_key_created_on_one_replica_works_on_the_others(open_keys: OpenKeyStore) -> None:
    replica_a, replica_b = open_keys(), open_keys()

    issued = replica_a.create(name="camera", collections=["lobby"], admin=False)

    assert replica_a.authenticate(issued.token) == issued.key  # at once where it was made
    assert eventually(lambda: replica_b.authenticate(issued.token), issued.key) == issued.key


def test_a_key_revoked_on_one_replica_is_refused_by_the_others(open_keys: OpenKeyStore) -> None:
    replica_a, replica_b, replica_c = open_keys(), open_keys(), open_keys()
    issued = replica_a.create(name="camera", collections=["lobby"], admin=False)
    for replica in (replica_b, replica_c):
        assert eventually(lambda r=replica: r.authenticate(issued.token), issued.key)

    replica_b.revoke(issued.key.key_id)

    assert replica_b.authenticate(issued.token) is None  # at once where it was revoked
    for replica in (replica_a, replica_c):
        assert eventually(lambda r=replica: r.authenticate(issued.token), None) is None


def test_a_key_revoked_in_psql_is_refused_everywhere(
    open_keys: OpenKeyStore, postgres_url: str
) -> None:
    replica_a, replica_b = open_keys(), open_keys()
    issued = replica_a.create(name="camera", collections=["lobby"], admin=False)
    assert eventually(lambda: replica_b.authenticate(issued.token), issued.key)

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s", (issued.key.key_id,)
        )

    for replica in (replica_a, replica_b):
        assert eventually(lambda r=replica: r.authenticate(issued.token), None) is None


def test_truncating_the_key_table_revokes_every_key_everywhere(
    open_keys: OpenKeyStore, postgres_url: str
) -> None:
    replica_a, replica_b = open_keys(), open_keys()
    issued = replica_a.create(name="camera", collections=["lobby"], admin=False)
    assert eventually(lambda: replica_b.authenticate(issued.token), issued.key)

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("TRUNCATE api_keys")

    for replica in (replica_a, replica_b):
        assert eventually(lambda r=replica: r.authenticate(issued.token), None) is None


def test_replicas_starting_together_on_an_empty_database_create_one_first_admin(
    open_keys: OpenKeyStore,
) -> None:
    stores = [open_keys() for _ in range(STARTERS)]
    start = threading.Barrier(STARTERS)
    issued: list[IssuedKey | None] = []
    errors: list[BaseException] = []

    def first_start(store: PostgresKeyStore) -> None:
        try:
            start.wait()
            issued.append(store.create_first_admin())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=first_start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)

    assert errors == []
    created = [key for key in issued if key is not None]
    assert len(issued) == STARTERS
    assert len(created) == 1
    assert [key.key_id for key in stores[0].list_keys()] == [created[0].key.key_id]


def test_two_replicas_can_never_revoke_the_last_two_admin_keys_at_once(
    open_keys: OpenKeyStore,
) -> None:
    replica_a, replica_b = open_keys(), open_keys()
    first = replica_a.create(name="admin-1", collections=[], admin=True)
    second = replica_a.create(name="admin-2", collections=[], admin=True)
    start = threading.Barrier(2)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def revoke(store: PostgresKeyStore, key_id: str) -> None:
        try:
            start.wait()
            store.revoke(key_id)
            outcomes.append("revoked")
        except LastAdminKey:
            outcomes.append("refused")
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=revoke, args=(replica_a, first.key.key_id)),
        threading.Thread(target=revoke, args=(replica_b, second.key.key_id)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)

    assert errors == []
    assert sorted(outcomes) == ["refused", "revoked"]
    assert sum(key.active and key.admin for key in replica_b.list_keys()) == 1
