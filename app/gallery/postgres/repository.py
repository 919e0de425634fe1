"""SQL statements of the PostgreSQL gallery. Callers own the connection and the transaction.

Lock order, the same in every write: the collection's row first (``lock_collection``),
then subjects and faces. Writes to one collection are thereby serialised (short
transactions), concurrent enrolments of one image resolve to one face, and no two
writers can deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from app.core.names import name_conflict, name_key
from app.core.types import FaceRecord, FloatArray, NewFace, SubjectSummary
from app.gallery.postgres.directory import CollectionRow

Connection = psycopg.Connection[Any]
Row = tuple[Any, ...]

# Selected with ``face_record``: faces f joined to their subject s and collection c.
FACE_COLUMNS = (
    "f.id, f.face_id, c.name, s.name, f.image_sha256, f.x1, f.y1, f.x2, f.y2, "
    "f.det_score, f.model_id, f.created_at"
)
FACES_JOINED = (
    "faces f JOIN subjects s ON s.id = f.subject_id JOIN collections c ON c.id = f.collection_id"
)
_INSERT_FACE = (
    "INSERT INTO faces (face_id, collection_id, subject_id, image_sha256, x1, y1, x2, y2, "
    "det_score, model_id, created_at, embedding) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %b) "
    "ON CONFLICT (subject_id, image_sha256) DO NOTHING RETURNING id"
)


def face_record(row: Row) -> FaceRecord:
    """A ``FACE_COLUMNS`` row (its first column, the row id, is not part of the record)."""
    return FaceRecord(
        face_id=row[1],
        collection=row[2],
        subject=row[3],
        image_sha256=row[4],
        bbox=(row[5], row[6], row[7], row[8]),
        det_score=row[9],
        model_id=row[10],
        created_at=row[11],
    )


def new_record(
    collection: str, subject: str, face: NewFace, *, model_id: str, now: datetime
) -> FaceRecord:
    x1, y1, x2, y2 = face.bbox
    return FaceRecord(
        face_id=uuid.uuid4().hex,
        collection=collection,
        subject=subject,
        image_sha256=face.image_sha256,
        bbox=(float(x1), float(y1), float(x2), float(y2)),
        det_score=float(face.det_score),
        model_id=model_id,
        created_at=now,
    )


# --- collections ------------------------------------------------------------------------


def lock_collection(connection: Connection, name: str, *, create: bool) -> int | None:
    """Lock the collection's row for this transaction (creating it if asked); its id."""
    found = connection.execute(
        "SELECT id FROM collections WHERE name = %s FOR UPDATE", (name,)
    ).fetchone()
    if found is not None or not create:
        return None if found is None else int(found[0])
    created = connection.execute(
        "INSERT INTO collections (name) VALUES (%s) ON CONFLICT (name) DO NOTHING RETURNING id",
        (name,),
    ).fetchone()
    if created is not None:
        return int(created[0])
    # Created by a concurrent transaction that has committed since: lock it now.
    return lock_collection(connection, name, create=False)


def collection_id(connection: Connection, name: str) -> int | None:
    found = connection.execute("SELECT id FROM collections WHERE name = %s", (name,)).fetchone()
    return None if found is None else int(found[0])


_COLLECTION_ROW = "SELECT id, name, face_count, subject_count, version FROM collections"


def collection_row(connection: Connection, collection_id: int) -> CollectionRow | None:
    found = connection.execute(f"{_COLLECTION_ROW} WHERE id = %s", (collection_id,)).fetchone()
    return None if found is None else CollectionRow(*found)


def collection_rows(connection: Connection) -> list[CollectionRow]:
    return [CollectionRow(*row) for row in connection.execute(f"{_COLLECTION_ROW} ORDER BY id")]


def subject_count(connection: Connection, collection_id: int) -> int:
    found = connection.execute(
        "SELECT subject_count FROM collections WHERE id = %s", (collection_id,)
    ).fetchone()
    return 0 if found is None else int(found[0])


# --- writes -------------------------------------------------------------------------------


def ensure_subject(
    connection: Connection, collection: str, collection_id: int, name: str, now: datetime
) -> int:
    """The subject's id, created if missing; ``NameConflict`` when another subject of the
    collection holds its name key (the unique index decides, in this transaction)."""
    return ensure_subjects(connection, collection, collection_id, [name], now)[name]


def ensure_subjects(
    connection: Connection,
    collection: str,
    collection_id: int,
    names: Sequence[str],
    now: datetime,
) -> dict[str, int]:
    """Create the missing subjects of ``names``; every name's subject id.

    ``NameConflict`` for the first name whose key another subject holds (already, or
    an earlier name of ``names``): the caller's transaction then creates none.
    """
    names = list(names)
    connection.execute(
        "INSERT INTO subjects (collection_id, name, name_key, created_at, updated_at) "
        "SELECT %s, name, name_key, %s, %s "
        "FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS new (name, name_key, ord) "
        "ORDER BY ord ON CONFLICT DO NOTHING",
        (collection_id, now, now, names, [name_key(name) for name in names]),
    )
    rows = connection.execute(
        "SELECT name, id FROM subjects WHERE collection_id = %s AND name = ANY(%s::text[])",
        (collection_id, names),
    )
    ids = {name: int(subject_id) for name, subject_id in rows}
    for name in names:
        if name not in ids:
            # The collection row is locked: the holder is still there.
            holder = key_holder(connection, collection_id, name_key(name))
            assert holder is not None  # the insert met either the name or the key
            raise name_conflict(collection, name, holder)
    return ids


def insert_face(
    connection: Connection,
    collection_id: int,
    subject_id: int,
    record: FaceRecord,
    face: NewFace,
    *,
    vectors: str = "faces",
) -> int | None:
    """Insert a face; its row id, or None when the subject already has this image.
    ``vectors``: the table of the serving generation's embeddings
    (``generation_tables.vectors_table``); with another than ``faces`` the face row
    holds no embedding of its own."""
    own = face.embedding if vectors == "faces" else None
    inserted = connection.execute(
        _INSERT_FACE, _face_parameters(collection_id, subject_id, record, own)
    ).fetchone()
    if inserted is None:
        return None
    row_id = int(inserted[0])
    if vectors != "faces":
        connection.execute(
            f"INSERT INTO {vectors} (id, face_id, collection_id, subject_id, embedding) "
            "VALUES (%s, %s, %s, %s, %b)",
            (
                row_id,
                record.face_id,
                collection_id,
                subject_id,
                np.ascontiguousarray(face.embedding, dtype=np.float32),
            ),
        )
    if face.aligned_png is not None:
        insert_crop(connection, row_id, face.aligned_png)
    return row_id


# A bulk import stages its rows with COPY (binary) in a temporary table of the
# session, then moves them with one INSERT: one statement, so the counting trigger
# fires once per batch instead of once per face.
_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS facerec_staged_faces ("
    "ord integer, face_id text, subject_id bigint, image_sha256 text, "
    "x1 double precision, y1 double precision, x2 double precision, y2 double precision, "
    "det_score double precision, created_at timestamptz, embedding vector, png bytea"
    ") ON COMMIT DELETE ROWS"
)
_STAGED_COLUMNS = (
    "ord, face_id, subject_id, image_sha256, x1, y1, x2, y2, det_score, created_at, embedding, png"
)
_STAGED_TYPES = [
    "int4", "text", "int8", "text", "float8", "float8", "float8", "float8", "float8",
    "timestamptz", "vector", "bytea",
]  # fmt: skip


def insert_faces(
    connection: Connection,
    collection_id: int,
    model_id: str,
    rows: Sequence[tuple[int, FaceRecord, NewFace]],
    *,
    vectors: str = "faces",
) -> list[FaceRecord]:
    """Insert ``(subject_id, record, face)`` rows in one statement; the records of those
    inserted (a face whose subject already has its image, in the database or earlier
    in ``rows``, is skipped). ``vectors``: as for ``insert_face``."""
    connection.execute(_STAGE)
    with connection.cursor().copy(
        f"COPY facerec_staged_faces ({_STAGED_COLUMNS}) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_STAGED_TYPES)
        for order, (subject_id, record, face) in enumerate(rows):
            copy.write_row(
                (
                    order,
                    record.face_id,
                    subject_id,
                    record.image_sha256,
                    *record.bbox,
                    record.det_score,
                    record.created_at,
                    np.ascontiguousarray(face.embedding, dtype=np.float32),
                    face.aligned_png,
                )
            )
    inserted = connection.execute(
        "INSERT INTO faces (face_id, collection_id, subject_id, image_sha256, x1, y1, x2, y2, "
        "det_score, model_id, created_at, embedding) "
        "SELECT DISTINCT ON (subject_id, image_sha256) face_id, %s, subject_id, image_sha256, "
        "x1, y1, x2, y2, det_score, %s, created_at, "
        f"{'embedding' if vectors == 'faces' else 'NULL::vector'} FROM facerec_staged_faces "
        "ORDER BY subject_id, image_sha256, ord "
        "ON CONFLICT (subject_id, image_sha256) DO NOTHING RETURNING face_id",
        (collection_id, model_id),
    ).fetchall()
    if vectors != "faces":
        connection.execute(
            f"INSERT INTO {vectors} (id, face_id, collection_id, subject_id, embedding) "
            "SELECT f.id, f.face_id, f.collection_id, f.subject_id, staged.embedding "
            "FROM facerec_staged_faces staged JOIN faces f ON f.face_id = staged.face_id"
        )
    connection.execute(
        "INSERT INTO face_crops (face_row, png) SELECT f.id, staged.png "
        "FROM facerec_staged_faces staged JOIN faces f ON f.face_id = staged.face_id "
        "WHERE staged.png IS NOT NULL"
    )
    kept = {face_id for (face_id,) in inserted}
    return [record for _, record, _ in rows if record.face_id in kept]


def insert_crop(connection: Connection, row_id: int, png: bytes) -> None:
    connection.execute("INSERT INTO face_crops (face_row, png) VALUES (%s, %s)", (row_id, png))


def touch_subjects(connection: Connection, subject_ids: Sequence[int], now: datetime) -> None:
    connection.execute(
        "UPDATE subjects SET updated_at = %s WHERE id = ANY(%s::bigint[])",
        (now, list(subject_ids)),
    )


def delete_subject(connection: Connection, subject_id: int) -> int:
    """Delete a subject and its faces; how many faces went."""
    (faces,) = connection.execute(
        "WITH gone AS (DELETE FROM faces WHERE subject_id = %s RETURNING 1) "
        "SELECT count(*) FROM gone",
        (subject_id,),
    ).fetchone() or (0,)
    connection.execute("DELETE FROM subjects WHERE id = %s", (subject_id,))
    return int(faces)


def delete_face(connection: Connection, row_id: int) -> None:
    connection.execute("DELETE FROM faces WHERE id = %s", (row_id,))


def _face_parameters(
    collection_id: int, subject_id: int, record: FaceRecord, embedding: FloatArray | None
) -> tuple[object, ...]:
    return (
        record.face_id,
        collection_id,
        subject_id,
        record.image_sha256,
        *record.bbox,
        record.det_score,
        record.model_id,
        record.created_at,
        None if embedding is None else np.ascontiguousarray(embedding, dtype=np.float32),
    )


# --- reads ----------------------------------------------------------------------------


def find_subject(connection: Connection, collection_id: int, name: str) -> int | None:
    found = connection.execute(
        "SELECT id FROM subjects WHERE collection_id = %s AND name = %s", (collection_id, name)
    ).fetchone()
    return None if found is None else int(found[0])


def key_holder(connection: Connection, collection_id: int, key: str) -> str | None:
    """The subject of the collection holding name key ``key``, if any (one index probe)."""
    found = connection.execute(
        "SELECT name FROM subjects WHERE collection_id = %s AND name_key = %s AND NOT look_alike",
        (collection_id, key),
    ).fetchone()
    return None if found is None else str(found[0])


def look_alike_of(connection: Connection, collection: str, subject: str) -> str | None:
    """The other subject whose name looks like ``subject``, unless ``subject`` exists."""
    found = connection.execute(
        "SELECT s.name FROM subjects s JOIN collections c ON c.id = s.collection_id "
        "WHERE c.name = %s AND s.name_key = %s AND NOT s.look_alike AND NOT EXISTS ("
        "SELECT 1 FROM subjects e WHERE e.collection_id = c.id AND e.name = %s)",
        (collection, name_key(subject), subject),
    ).fetchone()
    return None if found is None else str(found[0])


def find_face_by_image(
    connection: Connection, subject_id: int, image_sha256: str
) -> FaceRecord | None:
    row = connection.execute(
        f"SELECT {FACE_COLUMNS} FROM {FACES_JOINED} "
        "WHERE f.subject_id = %s AND f.image_sha256 = %s",
        (subject_id, image_sha256),
    ).fetchone()
    return None if row is None else face_record(row)


def find_face(
    connection: Connection, collection_id: int, face_id: str
) -> tuple[int, int, FaceRecord] | None:
    """``(row id, subject id, record)`` of a face of the collection, or None."""
    row = connection.execute(
        f"SELECT {FACE_COLUMNS}, f.subject_id FROM {FACES_JOINED} "
        "WHERE f.face_id = %s AND f.collection_id = %s",
        (face_id, collection_id),
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[-1]), face_record(row[:-1]))


def face_crop(
    connection: Connection, collection_id: int, face_id: str
) -> tuple[bool, bytes | None]:
    """``(face exists, its aligned crop or None)`` for a face of the collection."""
    row = connection.execute(
        "SELECT cr.png FROM faces f LEFT JOIN face_crops cr ON cr.face_row = f.id "
        "WHERE f.face_id = %s AND f.collection_id = %s",
        (face_id, collection_id),
    ).fetchone()
    if row is None:
        return False, None
    return True, None if row[0] is None else bytes(row[0])


def count_subject_faces(connection: Connection, subject_id: int) -> int:
    (count,) = connection.execute(
        "SELECT count(*) FROM faces WHERE subject_id = %s", (subject_id,)
    ).fetchone() or (0,)
    return int(count)


# SubjectSummary fields in order, then the subject's id.
_SUBJECT_SUMMARY = (
    "SELECT c.name, s.name, "
    "(SELECT count(*) FROM faces f WHERE f.subject_id = s.id), s.created_at, s.updated_at, s.id "
    "FROM subjects s JOIN collections c ON c.id = s.collection_id"
)


def get_subject(
    connection: Connection, collection_id: int, name: str
) -> tuple[int, SubjectSummary] | None:
    row = connection.execute(
        f"{_SUBJECT_SUMMARY} WHERE s.collection_id = %s AND s.name = %s",
        (collection_id, name),
    ).fetchone()
    return None if row is None else (int(row[-1]), SubjectSummary(*row[:-1]))


def list_subjects(
    connection: Connection, collection_id: int, *, limit: int, offset: int
) -> list[SubjectSummary]:
    rows = connection.execute(
        f"{_SUBJECT_SUMMARY} WHERE s.collection_id = %s ORDER BY s.name LIMIT %s OFFSET %s",
        (collection_id, limit, offset),
    )
    return [SubjectSummary(*row[:-1]) for row in rows]


def subject_faces(connection: Connection, subject_id: int) -> list[FaceRecord]:
    rows = connection.execute(
        f"SELECT {FACE_COLUMNS} FROM {FACES_JOINED} WHERE f.subject_id = %s ORDER BY f.id",
        (subject_id,),
    )
    return [face_record(row) for row in rows]


def aligned_crops_page(
    connection: Connection, collection_id: int | None, *, after_row: int, limit: int
) -> list[tuple[int, FaceRecord, bytes]]:
    """Faces that kept their aligned crop, in row order, after ``after_row``."""
    where = "f.id > %s"
    parameters: tuple[object, ...] = (after_row,)
    if collection_id is not None:
        where += " AND f.collection_id = %s"
        parameters += (collection_id,)
    rows = connection.execute(
        f"SELECT {FACE_COLUMNS}, cr.png FROM face_crops cr JOIN {FACES_JOINED} "
        f"ON f.id = cr.face_row WHERE {where} ORDER BY f.id LIMIT %s",
        (*parameters, limit),
    )
    return [(int(row[0]), face_record(row[:-1]), bytes(row[-1])) for row in rows]


def embeddings_page(
    connection: Connection,
    collection_id: int,
    *,
    after_row: int,
    limit: int,
    vectors: str = "faces",
) -> list[tuple[int, str, str, FloatArray]]:
    """``(row id, subject, face_id, embedding)`` in row order, after ``after_row``."""
    with connection.cursor(binary=True) as cursor:
        cursor.execute(
            f"SELECT f.id, s.name, f.face_id, f.embedding FROM {vectors} f "
            "JOIN subjects s ON s.id = f.subject_id WHERE f.collection_id = %s "
            "AND f.id > %s AND f.embedding IS NOT NULL ORDER BY f.id LIMIT %s",
            (collection_id, after_row, limit),
        )
        return [(int(row[0]), row[1], row[2], row[3]) for row in cursor.fetchall()]
