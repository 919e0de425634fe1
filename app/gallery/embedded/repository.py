"""SQL statements of the gallery. Callers own the connection, its lock and the transaction."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from app.core.types import FaceRecord, FloatArray, NewFace, SubjectSummary
from app.gallery.embedded.records import (
    FACE_COLUMNS,
    decode_embeddings,
    encode_embedding,
    face_record_from_row,
    subject_summary_from_row,
)
from app.storage.sqlite import format_timestamp


@dataclass(frozen=True, slots=True)
class ChangeMarks:
    """How far the database's changes go: the highest face row id ever used, and the
    newest entry of the deleted-faces log (both only grow, AUTOINCREMENT)."""

    last_row_id: int
    last_deletion_seq: int


@dataclass(frozen=True, slots=True)
class EmbeddingRows:
    """Consecutive faces of one collection, ready for ``CollectionIndex.add``."""

    ids: list[int]
    subjects: list[str]
    face_ids: list[str]
    embeddings: FloatArray  # (len(ids), D)


# --- writes ---------------------------------------------------------------------------


def ensure_subject(
    connection: sqlite3.Connection, collection: str, subject: str, now: datetime
) -> None:
    timestamp = format_timestamp(now)
    connection.execute(
        "INSERT INTO subjects (collection, name, created_at, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (collection, name) DO NOTHING",
        (collection, subject, timestamp, timestamp),
    )


def touch_subject(
    connection: sqlite3.Connection, collection: str, subject: str, now: datetime
) -> None:
    connection.execute(
        "UPDATE subjects SET updated_at = ? WHERE collection = ? AND name = ?",
        (format_timestamp(now), collection, subject),
    )


def insert_face(
    connection: sqlite3.Connection,
    collection: str,
    subject: str,
    face: NewFace,
    *,
    model_id: str,
    now: datetime,
) -> tuple[int, FaceRecord]:
    """Insert one face of an existing subject; returns its FAISS id and record."""
    x1, y1, x2, y2 = face.bbox
    record = FaceRecord(
        face_id=uuid.uuid4().hex,
        collection=collection,
        subject=subject,
        image_sha256=face.image_sha256,
        bbox=(float(x1), float(y1), float(x2), float(y2)),
        det_score=float(face.det_score),
        model_id=model_id,
        created_at=now,
    )
    cursor = connection.execute(
        "INSERT INTO faces (face_id, collection, subject, image_sha256, x1, y1, x2, y2, "
        "det_score, model_id, created_at, embedding, aligned_png) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.face_id,
            collection,
            subject,
            record.image_sha256,
            *record.bbox,
            record.det_score,
            model_id,
            format_timestamp(now),
            encode_embedding(face.embedding),
            face.aligned_png,
        ),
    )
    faiss_id = cursor.lastrowid
    assert faiss_id is not None  # an INSERT into a rowid table always sets it
    return faiss_id, record


def insert_faces_bulk(
    connection: sqlite3.Connection,
    collection: str,
    faces: Sequence[tuple[str, NewFace]],
    *,
    model_id: str,
    now: datetime,
) -> tuple[list[int], list[int], list[str]]:
    """Insert the faces not already there (same subject and image_sha256), subjects too.

    Returns the new faces' row ids (ascending), their positions in ``faces`` and their
    face ids. The caller holds the write transaction, so the rows above the previous
    high-water mark are exactly the ones inserted here.
    """
    timestamp = format_timestamp(now)
    subjects = list(dict.fromkeys(subject for subject, _ in faces))
    connection.executemany(
        "INSERT INTO subjects (collection, name, created_at, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (collection, name) DO NOTHING",
        [(collection, subject, timestamp, timestamp) for subject in subjects],
    )
    before = change_marks(connection).last_row_id
    face_ids = [uuid.uuid4().hex for _ in faces]
    connection.executemany(
        "INSERT INTO faces (face_id, collection, subject, image_sha256, x1, y1, x2, y2, "
        "det_score, model_id, created_at, embedding, aligned_png) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (collection, subject, image_sha256) DO NOTHING",
        (
            (
                face_id,
                collection,
                subject,
                face.image_sha256,
                *(float(value) for value in face.bbox),
                float(face.det_score),
                model_id,
                timestamp,
                encode_embedding(face.embedding),
                face.aligned_png,
            )
            for face_id, (subject, face) in zip(face_ids, faces, strict=True)
        ),
    )
    rows = connection.execute(
        "SELECT id, face_id, subject FROM faces WHERE id > ? ORDER BY id", (before,)
    ).fetchall()
    position_of = {face_id: position for position, face_id in enumerate(face_ids)}
    positions = [position_of[row["face_id"]] for row in rows]
    touched = list(dict.fromkeys(row["subject"] for row in rows))
    connection.executemany(
        "UPDATE subjects SET updated_at = ? WHERE collection = ? AND name = ?",
        [(timestamp, collection, subject) for subject in touched],
    )
    return [row["id"] for row in rows], positions, [row["face_id"] for row in rows]


def delete_subject(connection: sqlite3.Connection, collection: str, subject: str) -> None:
    """Delete a subject; its faces go with it (ON DELETE CASCADE)."""
    connection.execute(
        "DELETE FROM subjects WHERE collection = ? AND name = ?", (collection, subject)
    )


def delete_face(connection: sqlite3.Connection, faiss_id: int) -> None:
    connection.execute("DELETE FROM faces WHERE id = ?", (faiss_id,))


# --- reads ----------------------------------------------------------------------------


def find_face_by_image(
    connection: sqlite3.Connection, collection: str, subject: str, image_sha256: str
) -> FaceRecord | None:
    row = connection.execute(
        f"SELECT {FACE_COLUMNS} FROM faces "
        "WHERE collection = ? AND subject = ? AND image_sha256 = ?",
        (collection, subject, image_sha256),
    ).fetchone()
    return None if row is None else face_record_from_row(row)


def find_face(
    connection: sqlite3.Connection, collection: str, face_id: str
) -> tuple[int, FaceRecord] | None:
    row = connection.execute(
        f"SELECT {FACE_COLUMNS} FROM faces WHERE face_id = ? AND collection = ?",
        (face_id, collection),
    ).fetchone()
    return None if row is None else (row["id"], face_record_from_row(row))


def face_crop(
    connection: sqlite3.Connection, collection: str, face_id: str
) -> tuple[FaceRecord, bytes | None] | None:
    """A face and its aligned crop (None when it was stored without), or None: no such face."""
    row = connection.execute(
        f"SELECT {FACE_COLUMNS}, aligned_png FROM faces WHERE face_id = ? AND collection = ?",
        (face_id, collection),
    ).fetchone()
    return None if row is None else (face_record_from_row(row), row["aligned_png"])


def subject_face_ids(
    connection: sqlite3.Connection, collection: str, subject: str
) -> list[int] | None:
    """FAISS ids of a subject's faces, or None if the subject does not exist."""
    if get_subject(connection, collection, subject) is None:
        return None
    rows = connection.execute(
        "SELECT id FROM faces WHERE collection = ? AND subject = ? ORDER BY id",
        (collection, subject),
    )
    return [row["id"] for row in rows]


def count_subject_faces(connection: sqlite3.Connection, collection: str, subject: str) -> int:
    row = connection.execute(
        "SELECT COUNT(*) FROM faces WHERE collection = ? AND subject = ?", (collection, subject)
    ).fetchone()
    return int(row[0])


_SUBJECT_SUMMARY = (
    "SELECT s.collection, s.name, s.created_at, s.updated_at, "
    "(SELECT COUNT(*) FROM faces f WHERE f.collection = s.collection AND f.subject = s.name) "
    "AS face_count FROM subjects s"
)


def get_subject(
    connection: sqlite3.Connection, collection: str, subject: str
) -> SubjectSummary | None:
    row = connection.execute(
        f"{_SUBJECT_SUMMARY} WHERE s.collection = ? AND s.name = ?", (collection, subject)
    ).fetchone()
    return None if row is None else subject_summary_from_row(row)


def list_subjects(
    connection: sqlite3.Connection, collection: str, *, limit: int, offset: int
) -> tuple[list[SubjectSummary], int]:
    """One page of a collection's subjects ordered by name, and the collection's total."""
    rows = connection.execute(
        f"{_SUBJECT_SUMMARY} WHERE s.collection = ? ORDER BY s.name LIMIT ? OFFSET ?",
        (collection, limit, offset),
    )
    page = [subject_summary_from_row(row) for row in rows]
    total = connection.execute(
        "SELECT COUNT(*) FROM subjects WHERE collection = ?", (collection,)
    ).fetchone()[0]
    return page, int(total)


def subject_faces(
    connection: sqlite3.Connection, collection: str, subject: str
) -> list[FaceRecord]:
    rows = connection.execute(
        f"SELECT {FACE_COLUMNS} FROM faces WHERE collection = ? AND subject = ? ORDER BY id",
        (collection, subject),
    )
    return [face_record_from_row(row) for row in rows]


def collections(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute("SELECT DISTINCT collection FROM faces ORDER BY collection")
    return [row[0] for row in rows]


def embedding_batches(
    connection: sqlite3.Connection,
    collection: str,
    *,
    dim: int,
    batch_size: int,
    after_id: int = 0,
) -> Iterator[EmbeddingRows]:
    """The faces of a collection with ids above ``after_id``, in id order, a batch at a time."""
    while True:
        rows = connection.execute(
            "SELECT id, subject, face_id, embedding FROM faces "
            "WHERE collection = ? AND id > ? ORDER BY id LIMIT ?",
            (collection, after_id, batch_size),
        ).fetchall()
        if not rows:
            return
        yield EmbeddingRows(
            ids=[row["id"] for row in rows],
            subjects=[row["subject"] for row in rows],
            face_ids=[row["face_id"] for row in rows],
            embeddings=decode_embeddings([row["embedding"] for row in rows], dim),
        )
        after_id = rows[-1]["id"]


def count_faces(connection: sqlite3.Connection) -> dict[str, int]:
    """Faces per collection (an index-only scan)."""
    rows = connection.execute("SELECT collection, COUNT(*) FROM faces GROUP BY collection")
    return {row[0]: int(row[1]) for row in rows}


def faces_after(
    connection: sqlite3.Connection, last_row_id: int, *, dim: int, batch_size: int
) -> Iterator[tuple[list[str], EmbeddingRows]]:
    """Faces of every collection with row ids above ``last_row_id``, in id order, with
    each row's collection."""
    while True:
        rows = connection.execute(
            "SELECT id, collection, subject, face_id, embedding FROM faces "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (last_row_id, batch_size),
        ).fetchall()
        if not rows:
            return
        yield (
            [row["collection"] for row in rows],
            EmbeddingRows(
                ids=[row["id"] for row in rows],
                subjects=[row["subject"] for row in rows],
                face_ids=[row["face_id"] for row in rows],
                embeddings=decode_embeddings([row["embedding"] for row in rows], dim),
            ),
        )
        last_row_id = rows[-1]["id"]


# --- index snapshots ------------------------------------------------------------------


def change_marks(connection: sqlite3.Connection) -> ChangeMarks:
    rows = dict(
        connection.execute(
            "SELECT name, seq FROM sqlite_sequence WHERE name IN ('faces', 'deleted_faces')"
        ).fetchall()
    )
    return ChangeMarks(
        last_row_id=int(rows.get("faces", 0)), last_deletion_seq=int(rows.get("deleted_faces", 0))
    )


def deletions_after(connection: sqlite3.Connection, seq: int) -> list[tuple[str, int]]:
    """``(collection, face row id)`` of every face deleted after log entry ``seq``."""
    rows = connection.execute(
        "SELECT collection, face_row_id FROM deleted_faces WHERE seq > ? ORDER BY seq", (seq,)
    )
    return [(row[0], int(row[1])) for row in rows]


def record_snapshot(
    connection: sqlite3.Connection, token: str, marks: ChangeMarks, now: datetime
) -> None:
    connection.execute(
        "INSERT INTO index_snapshots (token, last_row_id, last_deletion_seq, created_at) "
        "VALUES (?, ?, ?, ?)",
        (token, marks.last_row_id, marks.last_deletion_seq, format_timestamp(now)),
    )


def snapshot_is_recorded(connection: sqlite3.Connection, token: str, marks: ChangeMarks) -> bool:
    row = connection.execute(
        "SELECT 1 FROM index_snapshots WHERE token = ? AND last_row_id = ? "
        "AND last_deletion_seq = ?",
        (token, marks.last_row_id, marks.last_deletion_seq),
    ).fetchone()
    return row is not None


def retire_snapshots(
    connection: sqlite3.Connection, *, keep: str | None, deletions_through: int
) -> None:
    """Forget every snapshot but ``keep``, and the deletions it already reflects."""
    connection.execute("DELETE FROM index_snapshots WHERE token IS NOT ?", (keep,))
    connection.execute("DELETE FROM deleted_faces WHERE seq <= ?", (deletions_through,))


def aligned_crops_page(
    connection: sqlite3.Connection, collection: str | None, *, after_id: int, limit: int
) -> list[tuple[int, FaceRecord, bytes]]:
    """Faces that kept their aligned crop, in id order, starting after ``after_id``."""
    where = "aligned_png IS NOT NULL AND id > ?"
    params: tuple[object, ...] = (after_id,)
    if collection is not None:
        where += " AND collection = ?"
        params += (collection,)
    rows = connection.execute(
        f"SELECT {FACE_COLUMNS}, aligned_png FROM faces WHERE {where} ORDER BY id LIMIT ?",
        (*params, limit),
    )
    return [(row["id"], face_record_from_row(row), row["aligned_png"]) for row in rows]
