"""API keys on disk: ``keys.sqlite3`` beside the gallery, hashes only.

A sibling database rather than a gallery table: keys are about who may call the
service, not about faces, and the gallery's schema and its version checks stay
untouched. The gallery's directory lock already makes this process the only
writer of the data directory.

Active keys are cached in memory so a request is authenticated without touching
SQLite; every change goes to SQLite first (one committed transaction) and then
to the cache, under one lock. Revoked keys stay in the table (``revoked_at``) so
listings keep their history and a key id is never reused.

Another process may change the keys while the service runs (``facerec keys
create-admin`` mints an admin key from the machine itself). SQLite's
``data_version`` tells when any other connection committed: it is checked when a
token names an unknown key id, and at most once a second otherwise, and the cache is
then reloaded, so a minted key works at once and an outside revocation within a
second.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from app.auth.keys import (
    ALL_COLLECTIONS,
    ApiKey,
    IssuedKey,
    hash_token,
    key_id_of,
    new_token,
    token_matches,
)
from app.core.names import clean_name
from app.errors import GalleryUnavailable, InvalidRequest, KeyNotFound, LastAdminKey
from app.storage import sqlite as sqlite_storage
from app.storage.sqlite import format_timestamp, parse_timestamp, transaction, utc_now

KEYS_FILENAME = "keys.sqlite3"
SCHEMA_VERSION = 1
NAME_MAX_LENGTH = 64

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id      TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        key_hash    TEXT NOT NULL,
        admin       INTEGER NOT NULL,
        collections TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        revoked_at  TEXT
    ) WITHOUT ROWID
    """,
)
_COLUMNS = "key_id, name, key_hash, admin, collections, created_at, revoked_at"
# Seconds between checks for keys changed by another process, while tokens are known.
REFRESH_INTERVAL_S = 1.0


class SqliteKeyStore:
    """Create, list, revoke and check API keys."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = _connect(path)
        try:
            _ensure_schema(self._db, path)
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys").fetchall()
        except BaseException:
            self._db.close()
            raise
        self._active = _active_keys(rows)
        self._empty = not rows
        # A second connection only asks SQLite whether anyone else committed.
        self._poll_lock = threading.Lock()
        try:
            self._poll = _connect(path)
            self._version = self._data_version()
        except BaseException:
            self._db.close()
            raise
        self._checked_at = time.monotonic()

    # --- requests ----------------------------------------------------------------------

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key ``token`` is, or None. Memory, plus a cheap SQLite version
        check (no disk read) when the key id is unknown or once a second: safe on the
        event loop."""
        key_id = key_id_of(token)
        if key_id is None:
            return None
        self._refresh(force=key_id not in self._active)
        entry = self._active.get(key_id)
        if entry is None or not token_matches(token, entry[1]):
            return None
        return entry[0]

    def _refresh(self, *, force: bool) -> None:
        """Reload the active keys if another connection committed since the last look."""
        now = time.monotonic()
        if not force and now - self._checked_at < REFRESH_INTERVAL_S:
            return
        with self._poll_lock:
            self._checked_at = now
            version = self._data_version()
            if version == self._version:
                return
            self._version = version
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys").fetchall()
            self._active = _active_keys(rows)
            self._empty = not rows

    def _data_version(self) -> int:
        version: int = self._poll.execute("PRAGMA data_version").fetchone()[0]
        return version

    # --- management (blocking: SQLite commits) ---------------------------------------------

    def create(self, *, name: str, collections: Sequence[str], admin: bool) -> IssuedKey:
        clean_name = _validate_name(name)
        scope = tuple(dict.fromkeys(collections))  # de-duplicated, order kept
        if not scope and not admin:
            raise InvalidRequest("a key needs at least one collection ('*' for all)")
        key_id, token = new_token()
        stored_hash = hash_token(token)
        key = ApiKey(
            key_id=key_id,
            name=clean_name,
            admin=admin,
            collections=(ALL_COLLECTIONS,) if admin else scope,
            created_at=utc_now(),
        )
        with self._lock:
            with transaction(self._db):
                self._db.execute(
                    f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    (
                        key.key_id,
                        key.name,
                        stored_hash,
                        int(key.admin),
                        json.dumps(list(key.collections)),
                        format_timestamp(key.created_at),
                    ),
                )
            self._active[key_id] = (key, stored_hash)
            self._empty = False
        return IssuedKey(key=key, token=token)

    def create_first_admin(self, name: str = "admin") -> IssuedKey | None:
        """An admin key when the store has never held any key; None otherwise.

        Called once at start-up, before the service takes requests.
        """
        with self._lock:
            if not self._empty:
                return None
        return self.create(name=name, collections=(), admin=True)

    def list_keys(self) -> list[ApiKey]:
        """Every key ever created, revoked ones included, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, key_id"
            ).fetchall()
        return [_key_from_row(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once; revoking a revoked key changes nothing."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise KeyNotFound(f"no API key {key_id!r}", key_id=key_id)
            key = _key_from_row(row)
            if not key.active:
                return key
            other_admins = (
                other.admin for other_id, (other, _) in self._active.items() if other_id != key_id
            )
            if key.admin and not any(other_admins):
                raise LastAdminKey(
                    "this is the last active admin key; create another admin key first",
                    key_id=key_id,
                )
            now = utc_now()
            with transaction(self._db):
                self._db.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE key_id = ?",
                    (format_timestamp(now), key_id),
                )
            self._active.pop(key_id, None)
        return ApiKey(
            key_id=key.key_id,
            name=key.name,
            admin=key.admin,
            collections=key.collections,
            created_at=key.created_at,
            revoked_at=now,
        )

    def close(self) -> None:
        with self._lock, self._poll_lock:
            self._db.close()
            self._poll.close()


def _connect(path: Path) -> sqlite3.Connection:
    # FULL synchronous (the helper's default): a key that was shown to its owner
    # survives a crash right after. The file is created owner-only.
    return sqlite_storage.connect(path)


def _ensure_schema(connection: sqlite3.Connection, path: Path) -> None:
    try:
        with transaction(connection):
            for statement in _TABLES:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            version = connection.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise GalleryUnavailable(
            f"{path} is not a readable API key database: {exc}", path=str(path)
        ) from exc
    if version != str(SCHEMA_VERSION):
        raise GalleryUnavailable(
            f"{path} has API key schema version {version}; this build reads {SCHEMA_VERSION}",
            path=str(path),
        )


def _validate_name(name: str) -> str:
    """The one name policy (app.core.names), and printable: no tabs or odd spaces."""
    clean = clean_name(name, field="name", max_length=NAME_MAX_LENGTH)
    if not clean.isprintable():
        raise InvalidRequest(
            f"a key name must be 1 to {NAME_MAX_LENGTH} printable characters", field="name"
        )
    return clean


def _active_keys(rows: Sequence[sqlite3.Row]) -> dict[str, tuple[ApiKey, str]]:
    return {
        row["key_id"]: (_key_from_row(row), row["key_hash"])
        for row in rows
        if row["revoked_at"] is None
    }


def _key_from_row(row: sqlite3.Row) -> ApiKey:
    revoked = row["revoked_at"]
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        admin=bool(row["admin"]),
        collections=tuple(json.loads(row["collections"])),
        created_at=parse_timestamp(row["created_at"]),
        revoked_at=None if revoked is None else parse_timestamp(revoked),
    )
