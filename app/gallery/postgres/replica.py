"""Copying faces between gallery generations (``app.core.generations.Replica``), PostgreSQL.

Faces are stored once (``faces``, with their crops); what a generation adds is one
embedding per face in its table (``generation_tables.vectors_table``). So "the faces
a generation holds" are those with an embedding there, copying a face writes its
new embedding only, and a face deleted from ``faces`` (by any replica, at any time)
leaves every generation at once. These methods are the swap's own: they bypass the
guard that refuses enrollments into a generation that does not serve.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors

from app.core.thresholds import CollectionSettings
from app.core.types import FaceRecord, NewFace
from app.errors import GenerationRetired, ModelSwapRejected
from app.gallery.postgres.generation_tables import WRITE_BARRIER_KEY, active_generation
from app.gallery.postgres.repository import FACE_COLUMNS, FACES_JOINED, face_record
from app.gallery.values import validate_new_face
from app.storage.postgres.database import Database
from app.storage.postgres.errors import translated

Connection = psycopg.Connection[Any]
# The barrier waits this long for running enrollments (short transactions; a bulk
# import batch may be long) while new ones queue behind it, then gives up the swap
# rather than stall every replica's enrollments for longer.
BARRIER_WAIT_S = 10.0


class ReplicaMixin:
    """The swap's side of ``PostgresGallery`` (it provides these attributes)."""

    _database: Database
    _table: str
    _generation: int
    _dim: int
    _sealed: bool

    def _require_open(self) -> None: ...  # pragma: no cover - PostgresGallery's

    def face_ids(self) -> set[str]:
        self._require_open()
        present = " WHERE embedding IS NOT NULL" if self._table == "faces" else ""
        rows = self._database.run(
            lambda connection: connection.execute(
                f"SELECT face_id FROM {self._table}{present}"
            ).fetchall(),
            what="list face ids",
        )
        return {str(face_id) for (face_id,) in rows}

    def faces_without_crop(self) -> int:
        self._require_open()
        row = self._database.run(
            lambda connection: connection.execute(
                "SELECT count(*) FROM faces f WHERE NOT EXISTS "
                "(SELECT 1 FROM face_crops cr WHERE cr.face_row = f.id)"
            ).fetchone(),
            what="count faces without crop",
        )
        return 0 if row is None else int(row[0])

    def crops_of(self, face_ids: Sequence[str]) -> list[tuple[FaceRecord, bytes]]:
        self._require_open()
        if not face_ids:
            return []
        rows = self._database.run(
            lambda connection: connection.execute(
                f"SELECT {FACE_COLUMNS}, cr.png FROM face_crops cr JOIN {FACES_JOINED} "
                "ON f.id = cr.face_row WHERE f.face_id = ANY(%s::text[]) ORDER BY f.id",
                (list(face_ids),),
            ).fetchall(),
            what="read crops",
        )
        return [(face_record(row[:-1]), bytes(row[-1])) for row in rows]

    def copy_faces(self, faces: Sequence[tuple[FaceRecord, NewFace]]) -> int:
        """Write each face's embedding into this generation; faces deleted meanwhile
        (or already held) are skipped."""
        for _, face in faces:
            validate_new_face(face, self._dim)
        self._require_open()
        if not faces:
            return 0
        return self._database.run(
            lambda connection: self._copy(connection, faces), what="copy faces"
        )

    def _copy(self, connection: Connection, faces: Sequence[tuple[FaceRecord, NewFace]]) -> int:
        # Lock the face rows first: one deleted meanwhile is skipped here instead of
        # failing the insert's foreign key; one locked cannot go until we commit.
        connection.execute(
            "SELECT id FROM faces WHERE face_id = ANY(%s::text[]) ORDER BY id FOR KEY SHARE",
            ([record.face_id for record, _ in faces],),
        )
        added = 0
        for record, face in faces:
            embedding = np.ascontiguousarray(face.embedding, dtype=np.float32)
            if self._table == "faces":
                cursor = connection.execute(
                    "UPDATE faces SET embedding = %b WHERE face_id = %s AND embedding IS NULL",
                    (embedding, record.face_id),
                )
            else:
                cursor = connection.execute(
                    f"INSERT INTO {self._table} (id, face_id, collection_id, subject_id, "
                    "embedding) SELECT id, face_id, collection_id, subject_id, %b FROM faces "
                    "WHERE face_id = %s ON CONFLICT DO NOTHING",
                    (embedding, record.face_id),
                )
            added += max(cursor.rowcount, 0)
        return added

    def remove_faces(self, face_ids: Sequence[str]) -> int:
        """Drop those faces' embeddings of this generation (the faces stay for others)."""
        self._require_open()
        if not face_ids:
            return 0
        statement = (
            "UPDATE faces SET embedding = NULL WHERE face_id = ANY(%s::text[]) "
            "AND embedding IS NOT NULL"
            if self._table == "faces"
            else f"DELETE FROM {self._table} WHERE face_id = ANY(%s::text[])"
        )
        return self._database.run(
            lambda connection: max(connection.execute(statement, (list(face_ids),)).rowcount, 0),
            what="remove faces",
        )

    def all_collection_settings(self) -> dict[str, CollectionSettings]:
        self._require_open()
        rows = self._database.run(
            lambda connection: connection.execute(
                "SELECT collection, target_fpir FROM collection_settings"
            ).fetchall(),
            what="read collection settings",
        )
        return {str(name): CollectionSettings(target_fpir=value) for name, value in rows}

    def put_collection_settings(self, settings: dict[str, CollectionSettings]) -> None:
        """Nothing to copy: every generation reads the one ``collection_settings`` table
        (a target false positive rate is a property of the collection, not of a model)."""

    @contextmanager
    def hold_writes(self) -> Iterator[None]:
        """The database-wide barrier: every replica's enrollments wait while inside
        (``generation_tables.require_active``); searches and deletions go on. Held on a
        connection of its own: a replica killed inside releases it with its session."""
        self._require_open()
        with translated("write barrier"):
            connection = self._database.connect()
        with connection:
            with translated("write barrier"):
                connection.execute(f"SET lock_timeout = '{BARRIER_WAIT_S * 1000:.0f}ms'")
                try:
                    connection.execute("SELECT pg_advisory_lock(%s)", (WRITE_BARRIER_KEY,))
                except pg_errors.LockNotAvailable as exc:
                    raise ModelSwapRejected(
                        f"enrollments did not pause within {BARRIER_WAIT_S:g} s (a long bulk "
                        "import running?); nothing was switched: activate again later",
                        reason="writes_busy",
                    ) from exc
                serving = active_generation(connection)
            if serving != self._generation:
                # The pointer moved since this job started (only possible if its job lock
                # was lost, e.g. the database restarted): switching now would drop the
                # faces enrolled into generation ``serving`` meanwhile.
                raise GenerationRetired(
                    f"generation {serving} became active during this swap; start it again",
                    retry_after_s=1,
                )
            yield

    def set_sealed(self, sealed: bool) -> None:
        """Sealed: this replica refuses enrollments here without asking the database."""
        self._sealed = sealed
