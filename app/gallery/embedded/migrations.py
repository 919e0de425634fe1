"""The gallery's SQL schema as numbered migrations, applied in order at open.

``MIGRATIONS[n]`` takes a database from schema version ``n`` to ``n + 1``; a new
gallery runs them all. Never edit a shipped migration: append a new one.
"""

from __future__ import annotations

_INITIAL = (
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

# Index snapshots (app/gallery/embedded/snapshot.py) are caught up from the
# database at open: faces added since are the rows above the snapshot's last row
# id; faces deleted since are logged here by a trigger, whatever deleted them
# (a cascade from ``subjects`` included). Faces are immutable, so those two are
# every change there can be. A snapshot is trusted only while its token is
# recorded in ``index_snapshots`` with the same marks.
_INDEX_SNAPSHOTS = (
    """
    CREATE TABLE deleted_faces (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        face_row_id INTEGER NOT NULL,
        collection  TEXT NOT NULL
    )
    """,
    """
    CREATE TRIGGER faces_log_deletes AFTER DELETE ON faces
    BEGIN
        INSERT INTO deleted_faces (face_row_id, collection) VALUES (old.id, old.collection);
    END
    """,
    """
    CREATE TRIGGER faces_are_immutable BEFORE UPDATE ON faces
    BEGIN
        SELECT RAISE(ABORT, 'gallery faces are immutable: delete and re-add instead');
    END
    """,
    """
    CREATE TABLE index_snapshots (
        token             TEXT PRIMARY KEY,
        last_row_id       INTEGER NOT NULL,
        last_deletion_seq INTEGER NOT NULL,
        created_at        TEXT NOT NULL
    ) WITHOUT ROWID
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_INITIAL, _INDEX_SNAPSHOTS)
SCHEMA_VERSION = len(MIGRATIONS)
