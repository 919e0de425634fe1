"""SQLite as the embedded backends use it: durable settings, explicit transactions,
owner-only files, and the timestamp format stored in TEXT columns."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from app.errors import GalleryUnavailable

# The database and its -wal/-shm files hold embeddings, face crops and key hashes:
# readable and writable by the service's user only.
OWNER_ONLY = 0o600
_SIDE_FILES = ("", "-wal", "-shm")


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    return moment.isoformat()


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def connect(
    path: Path, *, foreign_keys: bool = False, page_size: int | None = None
) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit), WAL, fsync on commit.

    ``page_size`` applies to a new database only (SQLite keeps an existing file's).

    The file (created owner-only if new) and its WAL side files are restricted to
    the owner. Raises ``GalleryUnavailable`` when the file is not a usable database
    or the filesystem refuses WAL journaling (network filesystems).
    """
    _create_owner_only(path)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    try:
        if page_size is not None:
            # Before WAL: the first write fixes a new file's page size for good.
            connection.execute(f"PRAGMA page_size={int(page_size)}")
        journal_mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if journal_mode != "wal":
            raise GalleryUnavailable(
                f"SQLite refused WAL journaling for {path} (got {journal_mode!r}); "
                "put FACEREC_DATA_DIR on a local filesystem",
                path=str(path),
            )
        # FULL: every commit is fsynced, so an acknowledged write survives power loss.
        connection.execute("PRAGMA synchronous=FULL")
        if foreign_keys:
            connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA busy_timeout=5000")
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise GalleryUnavailable(
            f"{path} is not a readable database: {exc}", path=str(path)
        ) from exc
    except BaseException:
        connection.close()
        raise
    restrict_to_owner(path)
    return connection


def restrict_to_owner(path: Path) -> None:
    """chmod 0600 the database and whichever of its side files exist."""
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, OWNER_ONLY)


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one write transaction; it has committed when the block exits."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _create_owner_only(path: Path) -> None:
    """Create an empty file with owner-only permissions unless it exists (umask-proof)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
    except FileExistsError:
        return
    os.close(fd)
