"""Copying faces between gallery generations (``app.core.generations.Replica``).

A model swap fills a new generation from the serving one: faces keep their face id,
collection, subject, image hash, box and creation time; only the embedding (and the
model id) is new. These methods are the swap's own: they bypass the seal that
stops the public writes of a generation that no longer serves.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from app.core.thresholds import CollectionSettings
from app.core.types import FaceRecord, NewFace
from app.errors import GenerationRetired
from app.gallery.embedded import repository
from app.gallery.embedded.index import CollectionIndex
from app.gallery.embedded.records import FACE_COLUMNS, encode_embedding, face_record_from_row
from app.gallery.values import validate_new_face
from app.storage.sqlite import format_timestamp, transaction, utc_now

# SQLite's default limit of host parameters is 32766; stay far below it.
_IDS_PER_QUERY = 500


class ReplicaMixin:
    """The swap's side of ``EmbeddedGallery`` (it provides these attributes)."""

    _write_lock: threading.Lock
    _db_lock: threading.Lock
    _db: sqlite3.Connection
    _model_id: str
    _dim: int
    _sealed: bool

    def _require_open(self) -> None: ...  # pragma: no cover - EmbeddedGallery's

    def _apply(
        self, collection: str, changed: int, change: Callable[[CollectionIndex], None]
    ) -> None: ...  # pragma: no cover - EmbeddedGallery's

    def _require_writable(self) -> None:
        """Public writes only. Caller holds ``_write_lock``."""
        if self._sealed:
            raise GenerationRetired(
                "the recognizer was switched while this request ran; nothing was written: "
                "send it again",
                retry_after_s=1,
            )

    def face_ids(self) -> set[str]:
        with self._db_lock:
            self._require_open()
            return {row[0] for row in self._db.execute("SELECT face_id FROM faces")}

    def faces_without_crop(self) -> int:
        with self._db_lock:
            self._require_open()
            row = self._db.execute("SELECT COUNT(*) FROM faces WHERE aligned_png IS NULL")
            return int(row.fetchone()[0])

    def crops_of(self, face_ids: Sequence[str]) -> list[tuple[FaceRecord, bytes]]:
        found: list[tuple[int, FaceRecord, bytes]] = []
        for start in range(0, len(face_ids), _IDS_PER_QUERY):
            chunk = list(face_ids[start : start + _IDS_PER_QUERY])
            marks = ",".join("?" * len(chunk))
            with self._db_lock:
                self._require_open()
                rows = self._db.execute(
                    f"SELECT {FACE_COLUMNS}, aligned_png FROM faces "
                    f"WHERE aligned_png IS NOT NULL AND face_id IN ({marks})",
                    chunk,
                ).fetchall()
            found += [(row["id"], face_record_from_row(row), row["aligned_png"]) for row in rows]
        found.sort(key=lambda item: item[0])
        return [(record, png) for _, record, png in found]

    def copy_faces(self, faces: Sequence[tuple[FaceRecord, NewFace]]) -> int:
        for _, face in faces:
            validate_new_face(face, self._dim)
        by_collection: dict[str, list[tuple[FaceRecord, NewFace]]] = {}
        for record, face in faces:
            by_collection.setdefault(record.collection, []).append((record, face))
        added = 0
        with self._write_lock:
            for collection, group in by_collection.items():
                added += self._copy_collection(collection, group)
        return added

    def _copy_collection(self, collection: str, faces: list[tuple[FaceRecord, NewFace]]) -> int:
        """Caller holds ``_write_lock``."""
        with self._db_lock:
            self._require_open()
            now = utc_now()
            with transaction(self._db):
                for subject in dict.fromkeys(record.subject for record, _ in faces):
                    repository.ensure_subject(self._db, collection, subject, now)
                before = repository.change_marks(self._db).last_row_id
                self._db.executemany(
                    "INSERT INTO faces (face_id, collection, subject, image_sha256, x1, y1, "
                    "x2, y2, det_score, model_id, created_at, embedding, aligned_png) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        (
                            record.face_id,
                            collection,
                            record.subject,
                            record.image_sha256,
                            *(float(value) for value in record.bbox),
                            float(record.det_score),
                            self._model_id,
                            format_timestamp(record.created_at),
                            encode_embedding(face.embedding),
                            face.aligned_png,
                        )
                        for record, face in faces
                    ),
                )
                rows = self._db.execute(
                    "SELECT id, face_id, subject FROM faces WHERE id > ? ORDER BY id", (before,)
                ).fetchall()
        if not rows:
            return 0
        embedding_of = {record.face_id: face.embedding for record, face in faces}
        row_ids = [row["id"] for row in rows]
        face_ids = [row["face_id"] for row in rows]
        subjects = [row["subject"] for row in rows]
        embeddings = np.ascontiguousarray(
            np.stack([embedding_of[face_id] for face_id in face_ids]), dtype=np.float32
        )
        self._apply(
            collection,
            len(rows),
            lambda index: index.add(row_ids, embeddings, subjects, face_ids),
        )
        return len(rows)

    def remove_faces(self, face_ids: Sequence[str]) -> int:
        removed = 0
        with self._write_lock:
            for start in range(0, len(face_ids), _IDS_PER_QUERY):
                removed += self._remove_chunk(list(face_ids[start : start + _IDS_PER_QUERY]))
        return removed

    def _remove_chunk(self, face_ids: list[str]) -> int:
        """Caller holds ``_write_lock``."""
        marks = ",".join("?" * len(face_ids))
        by_collection: dict[str, list[int]] = {}
        with self._db_lock:
            self._require_open()
            with transaction(self._db):
                rows = self._db.execute(
                    f"SELECT id, collection, subject FROM faces WHERE face_id IN ({marks})",
                    face_ids,
                ).fetchall()
                for row in rows:
                    repository.delete_face(self._db, row["id"])
                    by_collection.setdefault(row["collection"], []).append(row["id"])
                for collection, subject in {(row["collection"], row["subject"]) for row in rows}:
                    if repository.count_subject_faces(self._db, collection, subject) == 0:
                        repository.delete_subject(self._db, collection, subject)
        for collection, row_ids in by_collection.items():
            self._apply(collection, len(row_ids), _remover(row_ids))
        return len(rows)

    def all_collection_settings(self) -> dict[str, CollectionSettings]:
        with self._db_lock:
            self._require_open()
            rows = self._db.execute("SELECT collection, target_fpir FROM collection_settings")
            return {row[0]: CollectionSettings(target_fpir=row[1]) for row in rows}

    def put_collection_settings(self, settings: dict[str, CollectionSettings]) -> None:
        with self._write_lock, self._db_lock:
            self._require_open()
            with transaction(self._db):
                self._db.execute("DELETE FROM collection_settings")
                self._db.executemany(
                    "INSERT INTO collection_settings (collection, target_fpir, updated_at) "
                    "VALUES (?, ?, ?)",
                    [
                        (name, value.target_fpir, format_timestamp(utc_now()))
                        for name, value in settings.items()
                    ],
                )

    @contextmanager
    def hold_writes(self) -> Iterator[None]:
        with self._write_lock:
            yield

    def set_sealed(self, sealed: bool) -> None:
        """Caller may hold ``hold_writes`` (the flag is read under ``_write_lock``)."""
        self._sealed = sealed


def _remover(row_ids: list[int]) -> Callable[[CollectionIndex], None]:
    def remove(index: CollectionIndex) -> None:
        index.remove(row_ids)

    return remove
