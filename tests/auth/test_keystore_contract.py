"""The KeyStore contract, on both stores: SQLite (embedded) and PostgreSQL (replicas)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.auth.keys import ALL_COLLECTIONS
from app.auth.keystore import KeyStore
from app.auth.store import KEYS_FILENAME, SqliteKeyStore
from app.errors import InvalidRequest, KeyNotFound, LastAdminKey

OpenStore = Callable[[], KeyStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """``open_store()``: the store (again: as after a restart); all closed at teardown."""
    opened: list[KeyStore] = []
    cleanup: list[Callable[[], None]] = []
    if request.param == "sqlite":

        def open_() -> KeyStore:
            return SqliteKeyStore(tmp_path / KEYS_FILENAME)

    else:
        url: str = request.getfixturevalue("postgres_url")
        from app.auth.pgstore import PostgresKeyStore
        from app.storage.postgres import open_database

        def open_() -> KeyStore:
            database = open_database(url)
            cleanup.append(database.close)
            return PostgresKeyStore(database)

    def tracked() -> KeyStore:
        store = open_()
        opened.append(store)
        return store

    yield tracked
    for store in opened:
        store.close()
    for close in cleanup:
        close()


@pytest.fixture
def store(open_store: OpenStore) -> KeyStore:
    return open_store()


def test_a_created_key_authenticates_with_its_scope(store: KeyStore) -> None:
    issued = store.create(name="camera", collections=["lobby", "lobby", "hall"], admin=False)

    key = store.authenticate(issued.token)

    assert key == issued.key
    assert key is not None
    assert key.collections == ("lobby", "hall")
    assert not key.admin
    assert key.can_access("lobby")
    assert not key.can_access("vault")


def test_admin_keys_reach_every_collection(store: KeyStore) -> None:
    issued = store.create(name="ops", collections=["ignored"], admin=True)
    assert issued.key.collections == (ALL_COLLECTIONS,)
    assert store.authenticate(issued.token) == issued.key


@pytest.mark.parametrize(
    "token",
    ["", "frk_nope", "frk_0123456789abcdef_" + "A" * 43, "x" * 1000],
)
def test_unknown_and_malformed_tokens_authenticate_nobody(store: KeyStore, token: str) -> None:
    store.create(name="camera", collections=["lobby"], admin=False)
    assert store.authenticate(token) is None


def test_a_tampered_secret_authenticates_nobody(store: KeyStore) -> None:
    token = store.create(name="camera", collections=["lobby"], admin=False).token
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert store.authenticate(tampered) is None


def test_the_first_admin_key_is_created_once(store: KeyStore, open_store: OpenStore) -> None:
    first = store.create_first_admin()
    assert first is not None
    assert first.key.admin
    assert store.create_first_admin() is None
    assert open_store().create_first_admin() is None  # nor after a restart


def test_keys_list_oldest_first_with_revoked_ones(store: KeyStore) -> None:
    admin = store.create(name="admin", collections=[], admin=True)
    camera = store.create(name="camera", collections=["lobby"], admin=False)
    store.revoke(camera.key.key_id)

    listed = store.list_keys()

    assert [key.key_id for key in listed] == [admin.key.key_id, camera.key.key_id]
    assert listed[0].active
    assert not listed[1].active
    assert listed[1].revoked_at is not None


def test_a_revoked_key_authenticates_nobody_and_revoking_again_changes_nothing(
    store: KeyStore,
) -> None:
    issued = store.create(name="camera", collections=["lobby"], admin=False)

    revoked = store.revoke(issued.key.key_id)
    again = store.revoke(issued.key.key_id)

    assert store.authenticate(issued.token) is None
    assert revoked.revoked_at is not None
    assert again.revoked_at == revoked.revoked_at


def test_revoking_an_unknown_key_is_not_found(store: KeyStore) -> None:
    with pytest.raises(KeyNotFound):
        store.revoke("0123456789abcdef")


def test_the_last_active_admin_key_cannot_be_revoked(store: KeyStore) -> None:
    first = store.create(name="admin", collections=[], admin=True)
    with pytest.raises(LastAdminKey):
        store.revoke(first.key.key_id)
    second = store.create(name="admin-2", collections=[], admin=True)
    store.revoke(first.key.key_id)
    with pytest.raises(LastAdminKey):
        store.revoke(second.key.key_id)
    assert store.authenticate(second.token) == second.key


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "tab\there"])
def test_key_names_must_be_short_printable_text(store: KeyStore, name: str) -> None:
    with pytest.raises(InvalidRequest):
        store.create(name=name, collections=["lobby"], admin=False)


def test_a_non_admin_key_needs_a_collection(store: KeyStore) -> None:
    with pytest.raises(InvalidRequest, match="at least one collection"):
        store.create(name="camera", collections=[], admin=False)


def test_keys_survive_a_restart(store: KeyStore, open_store: OpenStore) -> None:
    kept = store.create(name="camera", collections=["lobby"], admin=False)
    gone = store.create(name="old", collections=["lobby"], admin=False)
    store.revoke(gone.key.key_id)
    store.close()

    reopened = open_store()

    assert reopened.authenticate(kept.token) == kept.key
    assert reopened.authenticate(gone.token) is None
    assert len(reopened.list_keys()) == 2
