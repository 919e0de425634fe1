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

# Look-alike subject names ("Ada", "ADA", "Ａｄａ": one ``app.core.names.name_key``):
# a collection holds one subject per key, and the unique index is the arbiter.
# ``name_key`` is computed by Python (``NAME_KEY_FUNCTION``, registered on the
# connection by ``schema``). Subjects from before the rule that share a key: the
# oldest (then the first by name) keeps it, the others stay, addressable by their
# exact names, with ``look_alike = 1`` for an operator to merge (docs/gallery.md).
# When a key's holder is deleted, its oldest look-alike takes the key over, so a
# key held by anyone is always held by one subject the index knows.
NAME_KEY_FUNCTION = "facerec_name_key"
_SUBJECT_NAME_KEYS = (
    "ALTER TABLE subjects ADD COLUMN name_key TEXT",
    "ALTER TABLE subjects ADD COLUMN look_alike INTEGER NOT NULL DEFAULT 0",
    f"UPDATE subjects SET name_key = {NAME_KEY_FUNCTION}(name)",
    """
    UPDATE subjects SET look_alike = 1 WHERE (collection, name) IN (
        SELECT collection, name FROM (
            SELECT collection, name, row_number() OVER (
                PARTITION BY collection, name_key ORDER BY created_at, name
            ) AS rank FROM subjects
        ) WHERE rank > 1
    )
    """,
    """
    CREATE UNIQUE INDEX subjects_by_name_key ON subjects (collection, name_key)
        WHERE look_alike = 0
    """,
    "CREATE INDEX subjects_look_alikes ON subjects (collection, name_key) WHERE look_alike = 1",
    """
    CREATE TRIGGER subjects_pass_name_key AFTER DELETE ON subjects
    WHEN old.look_alike = 0
    BEGIN
        UPDATE subjects SET look_alike = 0
         WHERE collection = old.collection AND name = (
            SELECT name FROM subjects
             WHERE collection = old.collection AND name_key = old.name_key
               AND look_alike = 1
             ORDER BY created_at, name LIMIT 1
         );
    END
    """,
)

# Per-collection settings an operator chose (issue 15: the target false positive
# identification rate of open-set identification). No row, or a NULL: the service
# default. Keyed by name: a collection may be configured before it holds faces.
_COLLECTION_SETTINGS = (
    """
    CREATE TABLE collection_settings (
        collection  TEXT PRIMARY KEY,
        target_fpir REAL CHECK (target_fpir IS NULL OR (target_fpir > 0 AND target_fpir < 1)),
        updated_at  TEXT NOT NULL
    ) WITHOUT ROWID
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _INITIAL,
    _INDEX_SNAPSHOTS,
    _SUBJECT_NAME_KEYS,
    _COLLECTION_SETTINGS,
)
SCHEMA_VERSION = len(MIGRATIONS)
