"""The SQLite schema of the gallery: connection settings, creation and version checks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.errors import GalleryModelMismatch, GalleryUnavailable
from app.storage import sqlite as sqlite_storage
from app.storage.sqlite import format_timestamp, transaction, utc_now

DB_FILENAME = "gallery.sqlite3"
# Bump on any change to the tables below, and teach ``ensure_schema`` to migrate.
SCHEMA_VERSION = 1

_TABLES = (
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE subjects (
        collection TEXT NOT NULL,
        name       TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (collection, name)
    ) WITHOUT ROWID
    """,
    # ``id`` is the FAISS id. AUTOINCREMENT: ids are never reused, so a stale
    # id can never point at a different face.
    """
    CREATE TABLE faces (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        face_id      TEXT NOT NULL UNIQUE,
        collection   TEXT NOT NULL,
        subject      TEXT NOT NULL,
        image_sha256 TEXT NOT NULL,
        x1           REAL NOT NULL,
        y1           REAL NOT NULL,
        x2           REAL NOT NULL,
        y2           REAL NOT NULL,
        det_score    REAL NOT NULL,
        model_id     TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        embedding    BLOB NOT NULL,
        aligned_png  BLOB,
        UNIQUE (collection, subject, image_sha256),
        FOREIGN KEY (collection, subject) REFERENCES subjects (collection, name)
            ON DELETE CASCADE
    )
    """,
    "CREATE INDEX faces_by_collection ON faces (collection, id)",
)


def connect(db_path: Path) -> sqlite3.Connection:
    """The gallery database with durable settings and foreign keys enforced."""
    return sqlite_storage.connect(db_path, foreign_keys=True)


def ensure_schema(
    connection: sqlite3.Connection, db_path: Path, *, model_id: str, dim: int
) -> None:
    """Create a new gallery, or check an existing one matches this build and model."""
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
    _check_version(meta, db_path)
    _check_model(meta, db_path, model_id=model_id, dim=dim)


def _create(connection: sqlite3.Connection, *, model_id: str, dim: int) -> None:
    for statement in _TABLES:
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


def _check_version(meta: dict[str, str], db_path: Path) -> None:
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
    if version < SCHEMA_VERSION:
        # No older schema has ever shipped; a migration goes here when one does.
        raise GalleryUnavailable(
            f"{db_path} has gallery schema version {version}, which this build cannot migrate "
            f"(it reads version {SCHEMA_VERSION})",
            path=str(db_path),
            schema_version=version,
            supported_version=SCHEMA_VERSION,
        )


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
