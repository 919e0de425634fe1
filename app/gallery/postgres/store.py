"""The PostgreSQL gallery: every replica reads and writes one database.

* The database is the only truth: searches, listings and writes go to it, so a
  face acknowledged by one replica is found by every replica's next search, and a
  deleted one by none. Nothing per-face is cached.
* Durability: every write is one transaction, committed (``synchronous_commit=on``)
  before the call returns.
* Cheap polled numbers (``stats``, ``collection_version``, ``total_faces``) come from
  a per-replica cache of the database's own counters, kept current by NOTIFY
  (``directory.CollectionDirectory``).
* One model per database (``schema.bind_model``); collections are namespaces:
  every statement is filtered by the collection's id.
* An unreachable database raises ``DatabaseUnavailable`` at once (``Database``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from types import TracebackType
from typing import TypeVar

import numpy as np

from app.core.gallery import BulkResult, EmbeddingBatch
from app.core.thresholds import CollectionSettings
from app.core.types import FaceRecord, FloatArray, NewFace, SearchHit, SubjectSummary
from app.errors import FaceNotFound, GenerationRetired, InvalidRequest, SubjectNotFound
from app.gallery.look_alikes import log_look_alikes
from app.gallery.postgres import repository
from app.gallery.postgres.directory import CollectionDirectory, CollectionRow
from app.gallery.postgres.generation_tables import (
    require_active,
    retired_if_dropped,
    vectors_table,
)
from app.gallery.postgres.name_keys import assign_name_keys, look_alike_counts
from app.gallery.postgres.replica import ReplicaMixin
from app.gallery.postgres.repository import Connection
from app.gallery.postgres.schema import bind_model, check_generation
from app.gallery.postgres.search import search_collection
from app.gallery.values import require_text, validate_embeddings, validate_new_face
from app.storage.postgres.database import Database
from app.storage.sqlite import utc_now

__all__ = ["GALLERY_CHANNEL", "PostgresGallery"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

GALLERY_CHANNEL = "facerec_gallery"
# Crops read per query by ``aligned_crops`` (~25 kB each), so a page is a few MB.
CROPS_PAGE_SIZE = 256
DEFAULT_EF_SEARCH = 100


class PostgresGallery(ReplicaMixin):
    """Faces of enrolled subjects, per collection, searchable by embedding."""

    def __init__(
        self,
        database: Database,
        *,
        model_id: str,
        dim: int,
        ef_search: int | None = None,
        owns_database: bool = False,
        generation: int = 0,
    ) -> None:
        """``owns_database``: ``close`` closes ``database`` too (it was opened for us).
        ``generation``: the gallery generation whose embeddings this instance reads
        and writes (``app.gallery.postgres.generations``); 0 before any model swap."""
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self._database = database
        self._model_id = model_id
        self._dim = dim
        self._ef_search = ef_search or DEFAULT_EF_SEARCH
        self._owns_database = owns_database
        self._closed = False
        self._generation = generation
        self._table = vectors_table(generation)
        self._sealed = False
        with database.setup_transaction() as connection:
            if generation == 0:
                bind_model(connection, model_id=model_id, dim=dim, where=database.where)
            else:
                check_generation(connection, generation, model_id=model_id, dim=dim)
            keyed = assign_name_keys(connection)
            look_alikes = look_alike_counts(connection) if keyed else {}
        if keyed:
            logger.info("name keys given to %d subjects written before they were kept", keyed)
        log_look_alikes(look_alikes)
        self._directory = CollectionDirectory(self._load_collections, self._load_collection)
        database.notifications.subscribe(
            GALLERY_CHANNEL, self._directory, timeout_s=database.options.startup_timeout_s
        )
        logger.info(
            "gallery %s opened: %d faces in %d collections, model %s",
            database.where,
            self.total_faces(),
            len(self.stats()),
            model_id,
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def generation(self) -> int:
        return self._generation

    # --- writes ---------------------------------------------------------------------

    def add_faces(
        self, collection: str, subject: str, faces: Sequence[NewFace]
    ) -> list[tuple[FaceRecord, bool]]:
        """Enroll faces of one subject in one transaction: ``(record, created)`` per face."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        for face in faces:
            validate_new_face(face, self._dim)
        self._require_open()
        if not faces:
            return []

        def write(connection: Connection) -> tuple[list[tuple[FaceRecord, bool]], int]:
            self._require_serving(connection)
            now = utc_now()
            collection_id = repository.lock_collection(connection, collection, create=True)
            assert collection_id is not None
            subject_id = repository.ensure_subject(
                connection, collection, collection_id, subject, now
            )
            results: list[tuple[FaceRecord, bool]] = []
            for face in faces:
                record = repository.new_record(
                    collection, subject, face, model_id=self._model_id, now=now
                )
                if repository.insert_face(
                    connection, collection_id, subject_id, record, face, vectors=self._table
                ):
                    results.append((record, True))
                    continue
                existing = repository.find_face_by_image(connection, subject_id, face.image_sha256)
                assert existing is not None  # the insert found it
                results.append((existing, False))
            if any(created for _, created in results):
                repository.touch_subjects(connection, [subject_id], now)
            return results, collection_id

        return self._write(write, "enroll")

    def add_faces_bulk(self, collection: str, faces: Sequence[tuple[str, NewFace]]) -> BulkResult:
        """Enroll many ``(subject, face)`` pairs in one transaction; faces already there stay."""
        require_text(collection, "collection")
        for subject, face in faces:
            require_text(subject, "subject")
            validate_new_face(face, self._dim)
        self._require_open()
        if not faces:
            return BulkResult(added=0, existing=0)

        def write(connection: Connection) -> tuple[BulkResult, int]:
            # An import batch may take long (each face goes into the HNSW graph): it is
            # an operator's job, not a request, so no statement time limit here.
            connection.execute("SET LOCAL statement_timeout = 0")
            self._require_serving(connection)
            now = utc_now()
            collection_id = repository.lock_collection(connection, collection, create=True)
            assert collection_id is not None
            names = list(dict.fromkeys(subject for subject, _ in faces))
            subject_ids = repository.ensure_subjects(
                connection, collection, collection_id, names, now
            )
            rows = [
                (
                    subject_ids[subject],
                    repository.new_record(
                        collection, subject, face, model_id=self._model_id, now=now
                    ),
                    face,
                )
                for subject, face in faces
            ]
            inserted = repository.insert_faces(
                connection, collection_id, self._model_id, rows, vectors=self._table
            )
            touched = sorted({subject_ids[record.subject] for record in inserted})
            if touched:
                repository.touch_subjects(connection, touched, now)
            result = BulkResult(added=len(inserted), existing=len(faces) - len(inserted))
            return result, collection_id

        return self._write(write, "bulk import")

    def delete_subject(self, collection: str, subject: str) -> int:
        """Delete a subject and all its faces; returns how many faces went."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        self._require_open()

        def write(connection: Connection) -> tuple[int, int]:
            collection_id = repository.lock_collection(connection, collection, create=False)
            subject_id = (
                None
                if collection_id is None
                else repository.find_subject(connection, collection_id, subject)
            )
            if collection_id is None or subject_id is None:
                raise _subject_not_found(collection, subject)
            return repository.delete_subject(connection, subject_id), collection_id

        return self._write(write, "delete subject")

    def delete_face(self, collection: str, face_id: str) -> FaceRecord:
        """Delete one face; a subject left without faces is deleted too."""
        require_text(collection, "collection")
        require_text(face_id, "face_id")
        self._require_open()

        def write(connection: Connection) -> tuple[FaceRecord, int]:
            collection_id = repository.lock_collection(connection, collection, create=False)
            found = (
                None
                if collection_id is None
                else repository.find_face(connection, collection_id, face_id)
            )
            if collection_id is None or found is None:
                raise FaceNotFound(
                    f"No face {face_id!r} in collection {collection!r}",
                    collection=collection,
                    face_id=face_id,
                )
            row_id, subject_id, record = found
            repository.delete_face(connection, row_id)
            if repository.count_subject_faces(connection, subject_id) == 0:
                repository.delete_subject(connection, subject_id)
            else:
                repository.touch_subjects(connection, [subject_id], utc_now())
            return record, collection_id

        return self._write(write, "delete face")

    # --- searches -----------------------------------------------------------------------

    def search(self, collection: str, embeddings: FloatArray, top_k: int) -> list[list[SearchHit]]:
        """For each query row of (N, D) ``embeddings``: up to ``top_k`` subjects, best first."""
        require_text(collection, "collection")
        if top_k < 1:
            raise InvalidRequest(f"top_k must be at least 1, got {top_k}", field="top_k")
        queries = validate_embeddings(embeddings, self._dim, "query embeddings")
        self._require_open()
        if len(queries) == 0:
            return []
        known = self._directory.row(collection)

        def read(connection: Connection) -> list[list[SearchHit]]:
            collection_id = (
                known.collection_id
                if known is not None
                else repository.collection_id(connection, collection)
            )
            if collection_id is None:
                return [[] for _ in range(len(queries))]
            return search_collection(
                connection,
                collection_id,
                queries,
                top_k,
                dim=self._dim,
                # A collection unknown here is new: small, so it is searched exactly.
                face_count=known.faces if known is not None else 0,
                ef_search=self._ef_search,
                table=self._table,
            )

        with retired_if_dropped(self._generation):
            return self._database.run(read, what="search")

    def best_match_for_subject(
        self, collection: str, subject: str, embedding: FloatArray
    ) -> SearchHit:
        """Highest similarity of ``embedding`` (D,) to any face of ``subject``."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        query = validate_embeddings(embedding.reshape(1, -1), self._dim, "query embedding")[0]
        self._require_open()

        def read(connection: Connection) -> tuple[str, float] | None:
            row = connection.execute(
                "SELECT f.face_id, -(f.embedding <#> %(q)b) AS similarity "
                f"FROM {self._table} f JOIN subjects s ON s.id = f.subject_id "
                "JOIN collections c ON c.id = s.collection_id "
                "WHERE c.name = %(c)s AND s.name = %(s)s AND f.embedding IS NOT NULL "
                "ORDER BY similarity DESC, f.id LIMIT 1",
                {"q": query, "c": collection, "s": subject},
            ).fetchone()
            return None if row is None else (row[0], float(row[1]))

        with retired_if_dropped(self._generation):
            found = self._database.run(read, what="verify")
        if found is None:
            raise _subject_not_found(collection, subject)
        face_id, similarity = found
        return SearchHit(
            subject=subject, similarity=min(1.0, max(-1.0, similarity)), face_id=face_id
        )

    # --- cheap reads (this replica's cache of the database's counters) ------------------

    def stats(self) -> dict[str, int]:
        """Number of faces per non-empty collection."""
        self._require_open()
        return self._directory.stats()

    def total_faces(self) -> int:
        return sum(self.stats().values())

    def collection_version(self, collection: str) -> int:
        """The database's change counter of the collection (the same on every replica)."""
        self._require_open()
        return self._directory.version(collection)

    # --- collection settings (app.core.thresholds.CollectionSettingsStore) ----------------

    def collection_settings(self, collection: str) -> CollectionSettings:
        """The stored settings of ``collection`` (all None when none were stored)."""
        require_text(collection, "collection")
        self._require_open()

        def read(connection: Connection) -> float | None:
            row = connection.execute(
                "SELECT target_fpir FROM collection_settings WHERE collection = %s",
                (collection,),
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return CollectionSettings(
            target_fpir=self._database.run(read, what="read collection settings")
        )

    def set_collection_settings(self, collection: str, settings: CollectionSettings) -> None:
        """Replace the collection's settings; committed when it returns."""
        require_text(collection, "collection")
        self._require_open()

        def write(connection: Connection) -> None:
            connection.execute(
                "INSERT INTO collection_settings (collection, target_fpir, updated_at) "
                "VALUES (%(c)s, %(t)s, now()) ON CONFLICT (collection) DO UPDATE "
                "SET target_fpir = EXCLUDED.target_fpir, updated_at = EXCLUDED.updated_at",
                {"c": collection, "t": settings.target_fpir},
            )

        self._database.run(write, what="write collection settings")

    # --- listings -------------------------------------------------------------------------

    def list_subjects(
        self, collection: str, *, limit: int, offset: int
    ) -> tuple[list[SubjectSummary], int]:
        """One page of subjects ordered by name, and the collection's subject total."""
        require_text(collection, "collection")
        if limit < 0 or offset < 0:
            raise InvalidRequest(
                f"limit and offset must not be negative (got limit={limit}, offset={offset})",
                field="limit" if limit < 0 else "offset",
            )
        self._require_open()

        def read(connection: Connection) -> tuple[list[SubjectSummary], int]:
            collection_id = repository.collection_id(connection, collection)
            if collection_id is None:
                return [], 0
            page = repository.list_subjects(connection, collection_id, limit=limit, offset=offset)
            return page, repository.subject_count(connection, collection_id)

        return self._database.run(read, what="list subjects")

    def get_subject(self, collection: str, subject: str) -> tuple[SubjectSummary, list[FaceRecord]]:
        require_text(collection, "collection")
        require_text(subject, "subject")
        self._require_open()

        def read(
            connection: Connection,
        ) -> tuple[SubjectSummary, list[FaceRecord]] | None:
            collection_id = repository.collection_id(connection, collection)
            found = (
                None
                if collection_id is None
                else repository.get_subject(connection, collection_id, subject)
            )
            if found is None:
                return None
            subject_id, summary = found
            return summary, repository.subject_faces(connection, subject_id)

        result = self._database.run(read, what="get subject")
        if result is None:
            raise _subject_not_found(collection, subject)
        return result

    def look_alike_of(self, collection: str, subject: str) -> str | None:
        """The other subject whose name looks like ``subject``, unless ``subject`` exists."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        self._require_open()
        return self._database.run(
            partial(repository.look_alike_of, collection=collection, subject=subject),
            what="check subject name",
        )

    def face_crop(self, collection: str, face_id: str) -> bytes | None:
        """The face's stored aligned crop (PNG); None when it was enrolled without one."""
        require_text(collection, "collection")
        require_text(face_id, "face_id")
        self._require_open()

        def read(connection: Connection) -> tuple[bool, bytes | None]:
            collection_id = repository.collection_id(connection, collection)
            if collection_id is None:
                return False, None
            return repository.face_crop(connection, collection_id, face_id)

        found, crop = self._database.run(read, what="read face crop")
        if not found:
            raise FaceNotFound(
                f"No face {face_id!r} in collection {collection!r}",
                collection=collection,
                face_id=face_id,
            )
        return crop

    def aligned_crops(self, collection: str | None = None) -> Iterator[tuple[FaceRecord, bytes]]:
        """Every stored aligned crop (PNG) with its face, in insertion order."""
        if collection is not None:
            require_text(collection, "collection")
        self._require_open()
        collection_id: int | None = None
        if collection is not None:
            collection_id = self._database.run(
                lambda connection: repository.collection_id(connection, collection),
                what="aligned crops",
            )
            if collection_id is None:
                return
        after_row = 0
        while True:
            page = self._database.run(
                partial(
                    repository.aligned_crops_page,
                    collection_id=collection_id,
                    after_row=after_row,
                    limit=CROPS_PAGE_SIZE,
                ),
                what="aligned crops",
            )
            if not page:
                return
            for _, record, png in page:
                yield record, png
            after_row = page[-1][0]

    def export_embeddings(self, collection: str, *, batch_size: int) -> Iterator[EmbeddingBatch]:
        """Every face of a collection in insertion order, ``batch_size`` at a time."""
        require_text(collection, "collection")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._require_open()
        collection_id = self._database.run(
            lambda connection: repository.collection_id(connection, collection), what="export"
        )
        if collection_id is None:
            return
        after_row = 0
        while True:
            page = self._database.run(
                partial(
                    repository.embeddings_page,
                    collection_id=collection_id,
                    after_row=after_row,
                    limit=batch_size,
                    vectors=self._table,
                ),
                what="export",
            )
            if not page:
                return
            embeddings = np.stack([embedding for _, _, _, embedding in page]).astype(np.float32)
            yield EmbeddingBatch(
                subjects=[subject for _, subject, _, _ in page],
                face_ids=[face_id for _, _, face_id, _ in page],
                embeddings=embeddings,
            )
            after_row = page[-1][0]

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following changes (and close the database if it was opened for us)."""
        if self._closed:
            return
        self._closed = True
        self._database.notifications.unsubscribe(self._directory)
        if self._owns_database:
            self._database.close()

    def __enter__(self) -> PostgresGallery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the gallery is closed")

    def _require_serving(self, connection: Connection) -> None:
        """An enrollment's first step: refused unless this generation serves (and after
        any swap barrier); see ``generation_tables.require_active``."""
        if self._sealed:
            raise GenerationRetired(
                "the recognizer was switched while this request ran; nothing was written: "
                "send it again",
                retry_after_s=1,
            )
        require_active(connection, self._generation)

    def _write(self, work: Callable[[Connection], tuple[T, int]], what: str) -> T:
        """Run a write transaction on one collection; once it has committed, this
        replica's counters show it (the others hear of it by NOTIFY)."""

        def transaction(connection: Connection) -> tuple[T, CollectionRow | None]:
            result, collection_id = work(connection)
            return result, repository.collection_row(connection, collection_id)

        result, counters = self._database.run(transaction, what=what)
        if counters is not None:
            self._directory.apply(counters)
        return result

    def _load_collections(self) -> list[CollectionRow]:
        return self._database.run(repository.collection_rows, what="collection counters")

    def _load_collection(self, collection_id: int) -> CollectionRow | None:
        return self._database.run(
            lambda connection: repository.collection_row(connection, collection_id),
            what="collection counters",
        )


def _subject_not_found(collection: str, subject: str) -> SubjectNotFound:
    return SubjectNotFound(
        f"No subject {subject!r} in collection {collection!r}",
        collection=collection,
        subject=subject,
    )
