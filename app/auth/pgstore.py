"""API keys in PostgreSQL (table ``api_keys``): one set of keys for every replica.

Each replica keeps the active keys in memory, so a request is authenticated
without a round trip, and follows every change: the table's trigger announces the
key id on ``facerec_keys`` whoever changed it (a replica, or an operator in psql),
and the replica re-reads that key. After a reconnection it re-reads them all.

A replica that has lost its notification connection cannot know whether a key was
revoked meanwhile, so it authenticates nobody (``DatabaseUnavailable``, a 503)
until it has re-read the keys; it never answers from a memory that may be stale.

Writes are transactions: the first admin key is created under a table lock (of
many replicas starting on an empty database, one prints a key), and revoking locks
the active admin keys so two replicas can never revoke the last two at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from app.auth.issuing import NewKey, issue_key
from app.auth.keys import ApiKey, IssuedKey, key_id_of, token_matches
from app.errors import DatabaseUnavailable, KeyNotFound, LastAdminKey
from app.storage.postgres.database import Database
from app.storage.postgres.errors import CLIENT_MESSAGE, RETRY_AFTER_S
from app.storage.sqlite import utc_now

Connection = psycopg.Connection[Any]

logger = logging.getLogger(__name__)

KEYS_CHANNEL = "facerec_keys"
# Notification payload that means "re-read every key" (sent on TRUNCATE).
EVERY_KEY = "*"
_COLUMNS = "key_id, name, key_hash, admin, collections, created_at, revoked_at"
Row = tuple[str, str, str, bool, list[str], datetime, datetime | None]


class PostgresKeyStore:
    """Create, list, revoke and check API keys kept in the shared database."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._lock = threading.Lock()
        self._active: dict[str, tuple[ApiKey, str]] = {}
        # Ids of revoked keys (never reused): a late local update cannot revive one.
        self._revoked: set[str] = set()
        self._closed = False
        database.notifications.subscribe(
            KEYS_CHANNEL, self, timeout_s=database.options.startup_timeout_s
        )

    # --- requests ----------------------------------------------------------------------

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key ``token`` is, or None. Memory only: safe on the event loop."""
        if not self._database.notifications.live:
            raise DatabaseUnavailable(CLIENT_MESSAGE, retry_after_s=RETRY_AFTER_S)
        key_id = key_id_of(token)
        with self._lock:
            entry = self._active.get(key_id) if key_id else None
        if entry is None or not token_matches(token, entry[1]):
            return None
        return entry[0]

    # --- management (blocking: database transactions) ------------------------------------

    def create(self, *, name: str, collections: Sequence[str], admin: bool) -> IssuedKey:
        new = issue_key(name=name, collections=collections, admin=admin, now=utc_now())
        self._database.run(lambda connection: _insert(connection, new), what="create key")
        self._remember(new.key, new.stored_hash)
        return IssuedKey(key=new.key, token=new.token)

    def create_first_admin(self, name: str = "admin") -> IssuedKey | None:
        """An admin key when the database has never held any key; None otherwise."""
        new = issue_key(name=name, collections=(), admin=True, now=utc_now())

        def first(connection: Connection) -> bool:
            # Conflicts with itself: replicas starting together take turns here.
            connection.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
            (exists,) = connection.execute("SELECT EXISTS (SELECT 1 FROM api_keys)").fetchone() or (
                False,
            )
            if exists:
                return False
            _insert(connection, new)
            return True

        if not self._database.run(first, what="create the first admin key"):
            return None
        self._remember(new.key, new.stored_hash)
        return IssuedKey(key=new.key, token=new.token)

    def list_keys(self) -> list[ApiKey]:
        """Every key ever created, revoked ones included, oldest first."""
        rows: list[Row] = self._database.run(
            lambda connection: connection.execute(
                f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, key_id"
            ).fetchall(),
            what="list keys",
        )
        return [_key(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once, on every replica; revoking a revoked key changes nothing."""

        def write(connection: Connection) -> ApiKey:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s FOR UPDATE", (key_id,)
            ).fetchone()
            if row is None:
                raise KeyNotFound(f"no API key {key_id!r}", key_id=key_id)
            key = _key(row)
            if not key.active:
                return key
            if key.admin:
                # Lock every active admin key: a concurrent revocation of another one
                # waits, then sees this one gone and refuses if it is the last.
                admins = connection.execute(
                    "SELECT key_id FROM api_keys WHERE admin AND revoked_at IS NULL FOR UPDATE"
                ).fetchall()
                if all(other == key_id for (other,) in admins):
                    raise LastAdminKey(
                        "this is the last active admin key; create another admin key first",
                        key_id=key_id,
                    )
            revoked = connection.execute(
                f"UPDATE api_keys SET revoked_at = %s WHERE key_id = %s RETURNING {_COLUMNS}",
                (utc_now(), key_id),
            ).fetchone()
            assert revoked is not None  # the row is locked: it is still there
            return _key(revoked)

        key = self._database.run(write, what="revoke key")
        with self._lock:
            self._revoked.add(key.key_id)
            self._active.pop(key.key_id, None)
        return key

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._database.notifications.unsubscribe(self)

    # --- notifications (the listener thread) -----------------------------------------------

    def resync(self) -> None:
        rows: list[Row] = self._database.run(
            lambda connection: connection.execute(f"SELECT {_COLUMNS} FROM api_keys").fetchall(),
            what="read keys",
        )
        active = {row[0]: (_key(row), row[2]) for row in rows if row[6] is None}
        revoked = {row[0] for row in rows if row[6] is not None}
        with self._lock:
            self._active = active
            self._revoked |= revoked
        logger.info("API keys read from the database: %d active", len(active))

    def notified(self, payload: str) -> None:
        if payload == EVERY_KEY:
            self.resync()
            return
        row: Row | None = self._database.run(
            lambda connection: connection.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s", (payload,)
            ).fetchone(),
            what="read key",
        )
        with self._lock:
            if row is None or row[6] is not None:  # deleted, or revoked
                self._revoked.add(payload)
                self._active.pop(payload, None)
            elif payload not in self._revoked:
                self._active[payload] = (_key(row), row[2])

    def _remember(self, key: ApiKey, stored_hash: str) -> None:
        """A key this replica just created, unless its revocation was heard first."""
        with self._lock:
            if key.key_id not in self._revoked:
                self._active[key.key_id] = (key, stored_hash)


def _insert(connection: Connection, new: NewKey) -> None:
    key = new.key
    connection.execute(
        f"INSERT INTO api_keys ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, NULL)",
        (
            key.key_id,
            key.name,
            new.stored_hash,
            key.admin,
            list(key.collections),
            key.created_at,
        ),
    )


def _key(row: Row) -> ApiKey:
    key_id, name, _, admin, collections, created_at, revoked_at = row
    return ApiKey(
        key_id=key_id,
        name=name,
        admin=bool(admin),
        collections=tuple(collections),
        created_at=created_at,
        revoked_at=revoked_at,
    )
