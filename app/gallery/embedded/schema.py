"""The SQLite schema of the gallery: connection settings, creation, version checks, migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.core.names import name_key
from app.errors import GalleryModelMismatch, GalleryUnavailable
from app.gallery.embedded.migrations import MIGRATIONS, NAME_KEY_FUNCTION, SCHEMA_VERSION
from app.storage import sqlite as sqlite_storage
from app.storage.sqlite import format_timestamp, transaction, utc_now

DB_FILENAME = "gallery.sqlite3"
# New galleries only (an existing file keeps its page size): rows hold a 2 kB
# embedding, and 16 kB pages fit several per page where 4 kB pages fit one.
# ``python -m bench.sqlite_pages``: 2.5 kB instead of 4.3 kB per 512-d face, inserts
# ~2.5x and full reads ~1.9x faster than 4 kB pages (docs/scale.md).
PAGE_SIZE = 16_384


def connect(db_path: Path) -> sqlite3.Connection:
    """The gallery database with durable settings and foreign keys enforced."""
    return sqlite_storage.connect(db_path, foreign_keys=True, page_size=PAGE_SIZE)


def ensure_schema(
    connection: sqlite3.Connection, db_path: Path, *, model_id: str, dim: int
) -> None:
    """Create a new gallery, or check an existing one matches this build and model."""
    # The name-key migration computes keys with the service's own function.
    connection.create_function(NAME_KEY_FUNCTION, 1, name_key, deterministic=True)
    with transaction(connection):
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if not tables:
            _create(connection, model_id=model_id, dim=dim)
            return
        if "meta" not in tables:
            raise GalleryUnavailable(
                f"{db_path} is an SQLite database but not a facerec gallery (no meta table); "
                "point FACEREC_DATA_DIR at another directory",
                path=str(db_path),
            )
        meta = {
            row["key"]: row["value"] for row in connection.execute("SELECT key, value FROM meta")
        }
        version = _check_version(meta, db_path)
        _check_model(meta, db_path, model_id=model_id, dim=dim)
        if version < SCHEMA_VERSION:
            _migrate(connection, version)


def check_readable(
    connection: sqlite3.Connection, db_path: Path, *, model_id: str, dim: int
) -> None:
    """Check, without writing, that an existing gallery is of this build's schema and of
    ``model_id`` / ``dim`` (a reader cannot migrate an older schema: the service does)."""
    try:
        meta = {
            row["key"]: row["value"] for row in connection.execute("SELECT key, value FROM meta")
        }
    except sqlite3.DatabaseError as exc:
        raise GalleryUnavailable(
            f"{db_path} is not a readable facerec gallery ({exc})", path=str(db_path)
        ) from None
    version = _check_version(meta, db_path)
    _check_model(meta, db_path, model_id=model_id, dim=dim)
    if version < SCHEMA_VERSION:
        raise GalleryUnavailable(
            f"{db_path} has gallery schema version {version}; this build reads version "
            f"{SCHEMA_VERSION}: start the service on it once to upgrade it",
            path=str(db_path),
            schema_version=version,
            supported_version=SCHEMA_VERSION,
        )


def _create(connection: sqlite3.Connection, *, model_id: str, dim: int) -> None:
    for migration in MIGRATIONS:
        for statement in migration:
            connection.execute(statement)
    connection.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [
            ("schema_version", str(SCHEMA_VERSION)),
            ("model_id", model_id),
            ("dim", str(dim)),
            ("created_at", format_timestamp(utc_now())),
        ],
    )


def _migrate(connection: sqlite3.Connection, version: int) -> None:
    """Apply the migrations after ``version`` (inside the caller's transaction)."""
    for migration in MIGRATIONS[version:]:
        for statement in migration:
            connection.execute(statement)
    connection.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
    )


def _check_version(meta: dict[str, str], db_path: Path) -> int:
    """The database's schema version, refusing one this build cannot read."""
    raw_version = meta.get("schema_version", "")
    if not raw_version.isdigit():
        raise GalleryUnavailable(
            f"{db_path} has no valid schema_version in its meta table ({raw_version!r}); "
            "the file is damaged or not a facerec gallery",
            path=str(db_path),
        )
    version = int(raw_version)
    if version > SCHEMA_VERSION:
        raise GalleryUnavailable(
            f"{db_path} was written by a newer facerec (gallery schema version {version}; "
            f"this build reads version {SCHEMA_VERSION}). Upgrade facerec, or point "
            "FACEREC_DATA_DIR at another directory",
            path=str(db_path),
            schema_version=version,
            supported_version=SCHEMA_VERSION,
        )
    if version < 1:
        raise GalleryUnavailable(
            f"{db_path} has gallery schema version {version}, which never existed; "
            "the file is damaged or not a facerec gallery",
            path=str(db_path),
            schema_version=version,
        )
    return version


def _check_model(meta: dict[str, str], db_path: Path, *, model_id: str, dim: int) -> None:
    stored_model = meta.get("model_id", "")
    stored_dim = meta.get("dim", "")
    if stored_model == model_id and stored_dim == str(dim):
        return
    raise GalleryModelMismatch(
        f"The gallery in {db_path.parent} holds embeddings of model {stored_model!r} "
        f"(dim {stored_dim}), but the loaded recognizer is {model_id!r} (dim {dim}). "
        "Embeddings of different models are not comparable: load the gallery's model, "
        "re-enroll the gallery with the loaded one, or point FACEREC_DATA_DIR at another "
        "directory.",
        gallery_model_id=stored_model,
        gallery_dim=stored_dim,
        loaded_model_id=model_id,
        loaded_dim=dim,
    )
