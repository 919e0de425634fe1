"""The durable face gallery: SQLite is the truth, FAISS an in-memory cache of it.

Layout of the data directory: ``gallery.sqlite3`` (plus its ``-wal``/``-shm``
files) and ``gallery.lock``. The directory must be on a local filesystem (WAL).

* Durability: every write is one SQLite transaction (WAL, ``synchronous=FULL``)
  and returns only after it committed, so an acknowledged write survives
  ``kill -9`` and power loss. FAISS is updated after the commit.
* No FAISS index file is ever written. The per-collection indexes are rebuilt
  from the embeddings in SQLite at open, so there is no snapshot that could be
  stale, truncated, or from another model and would need verifying.
* One model per gallery: the model id and embedding dim are recorded at
  creation and checked at every open (``GalleryModelMismatch``).
* Collections are namespaces; nothing crosses them.
* Concurrency: searches share a readers-writer lock and run in parallel; a
  write holds the SQLite lock for its transaction and then the index lock
  exclusively while it changes FAISS. Lock order is always SQLite -> index.
  One ``Gallery`` per directory (enforced by ``DirectoryLock``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import numpy as np

from app.core.gallery import BulkResult, EmbeddingBatch
from app.core.types import FaceRecord, FloatArray, NewFace, SearchHit, SubjectSummary
from app.errors import FaceNotFound, GalleryUnavailable, InvalidRequest, SubjectNotFound
from app.gallery.embedded import repository
from app.gallery.embedded.dirlock import DirectoryLock
from app.gallery.embedded.index import CollectionIndex
from app.gallery.embedded.rwlock import ReadWriteLock
from app.gallery.embedded.schema import DB_FILENAME, connect, ensure_schema
from app.gallery.values import require_text, validate_embeddings, validate_new_face
from app.storage.sqlite import transaction, utc_now

__all__ = ["EmbeddedGallery"]

logger = logging.getLogger(__name__)

# Rows read per query when loading embeddings: bounds memory, not correctness.
LOAD_BATCH_SIZE = 4096
# Crops read per query by ``aligned_crops`` (~25 kB each), so a page is a few MB.
CROPS_PAGE_SIZE = 256


class EmbeddedGallery:
    """Faces of enrolled subjects, per collection, searchable by embedding."""

    def __init__(self, path: Path, *, model_id: str, dim: int) -> None:
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        path.mkdir(parents=True, exist_ok=True)
        self._model_id = model_id
        self._dim = dim
        self._db_lock = threading.Lock()  # guards the connection and orders writers
        self._index_lock = ReadWriteLock()  # guards self._indexes
        self._closed = False
        self._versions: dict[str, int] = {}  # writes per collection since open
        with ExitStack() as cleanup:
            self._directory_lock = DirectoryLock(path)
            cleanup.callback(self._directory_lock.release)
            db_path = path / DB_FILENAME
            self._db = connect(db_path)
            cleanup.callback(self._db.close)
            ensure_schema(self._db, db_path, model_id=model_id, dim=dim)
            self._indexes = {
                collection: self._load_collection(collection)
                for collection in repository.collections(self._db)
            }
            cleanup.pop_all()
        logger.info(
            "gallery %s opened: %d faces in %d collections, model %s",
            path,
            self.total_faces(),
            len(self._indexes),
            model_id,
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    # --- writes ---------------------------------------------------------------------

    def add_faces(
        self, collection: str, subject: str, faces: Sequence[NewFace]
    ) -> list[tuple[FaceRecord, bool]]:
        """Enroll faces of one subject in one transaction.

        Returns one ``(record, created)`` per face, in order; ``created`` is False
        when this image was already enrolled for the subject (the existing record).
        """
        require_text(collection, "collection")
        require_text(subject, "subject")
        for face in faces:
            validate_new_face(face, self._dim)
        if not faces:
            return []
        results: list[tuple[FaceRecord, bool]] = []
        added: list[tuple[int, FaceRecord, NewFace]] = []
        with self._db_lock:
            self._require_open()
            now = utc_now()
            with transaction(self._db):
                repository.ensure_subject(self._db, collection, subject, now)
                for face in faces:
                    existing = repository.find_face_by_image(
                        self._db, collection, subject, face.image_sha256
                    )
                    if existing is not None:
                        results.append((existing, False))
                        continue
                    faiss_id, record = repository.insert_face(
                        self._db, collection, subject, face, model_id=self._model_id, now=now
                    )
                    results.append((record, True))
                    added.append((faiss_id, record, face))
                if added:
                    repository.touch_subject(self._db, collection, subject, now)
            if added:
                embeddings = np.stack([face.embedding for _, _, face in added])
                embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
                self._update_index(
                    collection,
                    lambda index: index.add(
                        [faiss_id for faiss_id, _, _ in added],
                        embeddings,
                        [subject] * len(added),
                        [record.face_id for _, record, _ in added],
                    ),
                )
        return results

    def add_faces_bulk(self, collection: str, faces: Sequence[tuple[str, NewFace]]) -> BulkResult:
        """Enroll many ``(subject, face)`` pairs in one transaction; faces already there stay."""
        require_text(collection, "collection")
        for subject, face in faces:
            require_text(subject, "subject")
            validate_new_face(face, self._dim)
        if not faces:
            return BulkResult(added=0, existing=0)
        added: list[tuple[int, FaceRecord, NewFace]] = []
        with self._db_lock:
            self._require_open()
            now = utc_now()
            with transaction(self._db):
                for subject in dict.fromkeys(subject for subject, _ in faces):
                    repository.ensure_subject(self._db, collection, subject, now)
                for subject, face in faces:
                    if repository.find_face_by_image(
                        self._db, collection, subject, face.image_sha256
                    ):
                        continue
                    faiss_id, record = repository.insert_face(
                        self._db, collection, subject, face, model_id=self._model_id, now=now
                    )
                    added.append((faiss_id, record, face))
                for subject in dict.fromkeys(record.subject for _, record, _ in added):
                    repository.touch_subject(self._db, collection, subject, now)
            if added:
                embeddings = np.ascontiguousarray(
                    np.stack([face.embedding for _, _, face in added]), dtype=np.float32
                )
                self._update_index(
                    collection,
                    lambda index: index.add(
                        [faiss_id for faiss_id, _, _ in added],
                        embeddings,
                        [record.subject for _, record, _ in added],
                        [record.face_id for _, record, _ in added],
                    ),
                )
        return BulkResult(added=len(added), existing=len(faces) - len(added))

    def delete_subject(self, collection: str, subject: str) -> int:
        """Delete a subject and all its faces; returns how many faces went."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        with self._db_lock:
            self._require_open()
            with transaction(self._db):
                faiss_ids = repository.subject_face_ids(self._db, collection, subject)
                if faiss_ids is None:
                    raise _subject_not_found(collection, subject)
                repository.delete_subject(self._db, collection, subject)
            self._update_index(collection, lambda index: index.remove(faiss_ids))
        return len(faiss_ids)

    def delete_face(self, collection: str, face_id: str) -> FaceRecord:
        """Delete one face; a subject left without faces is deleted too."""
        require_text(collection, "collection")
        require_text(face_id, "face_id")
        with self._db_lock:
            self._require_open()
            with transaction(self._db):
                found = repository.find_face(self._db, collection, face_id)
                if found is None:
                    raise FaceNotFound(
                        f"No face {face_id!r} in collection {collection!r}",
                        collection=collection,
                        face_id=face_id,
                    )
                faiss_id, record = found
                repository.delete_face(self._db, faiss_id)
                if repository.count_subject_faces(self._db, collection, record.subject) == 0:
                    repository.delete_subject(self._db, collection, record.subject)
                else:
                    repository.touch_subject(self._db, collection, record.subject, utc_now())
            self._update_index(collection, lambda index: index.remove([faiss_id]))
        return record

    # --- searches (FAISS, shared lock) --------------------------------------------------

    def search(self, collection: str, embeddings: FloatArray, top_k: int) -> list[list[SearchHit]]:
        """For each query row of (N, D) ``embeddings``: up to ``top_k`` subjects, best first.

        A subject appears once, with its most similar face.
        """
        require_text(collection, "collection")
        if top_k < 1:
            raise InvalidRequest(f"top_k must be at least 1, got {top_k}", field="top_k")
        queries = validate_embeddings(embeddings, self._dim, "query embeddings")
        with self._index_lock.read():
            self._require_open()
            index = self._indexes.get(collection)
            if index is None:
                return [[] for _ in range(len(queries))]
            return index.search(queries, top_k)

    def best_match_for_subject(
        self, collection: str, subject: str, embedding: FloatArray
    ) -> SearchHit:
        """Highest similarity of ``embedding`` (D,) to any face of ``subject``."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        query = validate_embeddings(embedding.reshape(1, -1), self._dim, "query embedding")[0]
        with self._index_lock.read():
            self._require_open()
            index = self._indexes.get(collection)
            hit = None if index is None else index.best_match(subject, query)
        if hit is None:
            raise _subject_not_found(collection, subject)
        return hit

    def stats(self) -> dict[str, int]:
        """Number of faces per non-empty collection."""
        with self._index_lock.read():
            self._require_open()
            return {name: index.face_count for name, index in sorted(self._indexes.items())}

    def total_faces(self) -> int:
        return sum(self.stats().values())

    def collection_version(self, collection: str) -> int:
        """Writes to ``collection`` since this gallery was opened (the only writer)."""
        with self._index_lock.read():
            return self._versions.get(collection, 0)

    # --- listings (SQLite) --------------------------------------------------------------

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
        with self._db_lock:
            self._require_open()
            return repository.list_subjects(self._db, collection, limit=limit, offset=offset)

    def get_subject(self, collection: str, subject: str) -> tuple[SubjectSummary, list[FaceRecord]]:
        require_text(collection, "collection")
        require_text(subject, "subject")
        with self._db_lock:
            self._require_open()
            summary = repository.get_subject(self._db, collection, subject)
            if summary is None:
                raise _subject_not_found(collection, subject)
            return summary, repository.subject_faces(self._db, collection, subject)

    def aligned_crops(self, collection: str | None = None) -> Iterator[tuple[FaceRecord, bytes]]:
        """Every stored aligned crop (PNG) with its face, e.g. to re-embed with a new model."""
        if collection is not None:
            require_text(collection, "collection")
        after_id = 0
        while True:
            with self._db_lock:
                self._require_open()
                page = repository.aligned_crops_page(
                    self._db, collection, after_id=after_id, limit=CROPS_PAGE_SIZE
                )
            if not page:
                return
            for _, record, png in page:
                yield record, png
            after_id = page[-1][0]

    def face_crop(self, collection: str, face_id: str) -> bytes | None:
        """The face's stored aligned crop (PNG); None when it was enrolled without one."""
        require_text(collection, "collection")
        require_text(face_id, "face_id")
        with self._db_lock:
            self._require_open()
            found = repository.face_crop(self._db, collection, face_id)
        if found is None:
            raise FaceNotFound(
                f"No face {face_id!r} in collection {collection!r}",
                collection=collection,
                face_id=face_id,
            )
        return found[1]

    def export_embeddings(self, collection: str, *, batch_size: int) -> Iterator[EmbeddingBatch]:
        """Every face of a collection in insertion order, ``batch_size`` at a time."""
        require_text(collection, "collection")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        after_id = 0
        while True:
            with self._db_lock:
                self._require_open()
                batch = next(
                    repository.embedding_batches(
                        self._db,
                        collection,
                        dim=self._dim,
                        batch_size=batch_size,
                        after_id=after_id,
                    ),
                    None,
                )
            if batch is None:
                return
            yield EmbeddingBatch(
                subjects=batch.subjects, face_ids=batch.face_ids, embeddings=batch.embeddings
            )
            after_id = batch.ids[-1]

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Release the database and the directory; safe to call twice."""
        with self._db_lock, self._index_lock.write():
            if self._closed:
                return
            self._closed = True
            self._indexes.clear()
            self._db.close()
            self._directory_lock.release()

    def __enter__(self) -> EmbeddedGallery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the gallery is closed")

    def _load_collection(self, collection: str) -> CollectionIndex:
        """Build a collection's index from SQLite. Caller holds ``_db_lock`` (or is __init__)."""
        index = CollectionIndex(self._dim)
        try:
            for batch in repository.embedding_batches(
                self._db, collection, dim=self._dim, batch_size=LOAD_BATCH_SIZE
            ):
                index.add(batch.ids, batch.embeddings, batch.subjects, batch.face_ids)
        except ValueError as exc:
            raise GalleryUnavailable(
                f"The gallery holds a damaged embedding in collection {collection!r}: {exc}",
                collection=collection,
            ) from exc
        return index

    def _update_index(self, collection: str, change: Callable[[CollectionIndex], None]) -> None:
        """Apply a committed change to FAISS. Caller holds ``_db_lock``."""
        with self._index_lock.write():
            self._versions[collection] = self._versions.get(collection, 0) + 1
            index = self._indexes.get(collection)
            if index is None:
                index = CollectionIndex(self._dim)
            try:
                change(index)
            except Exception:
                # The change is committed; only the cache is off. Rebuild it from the truth.
                logger.exception("FAISS update failed; rebuilding %r from SQLite", collection)
                index = self._load_collection(collection)
            if index.face_count:
                self._indexes[collection] = index
            else:
                self._indexes.pop(collection, None)


def _subject_not_found(collection: str, subject: str) -> SubjectNotFound:
    return SubjectNotFound(
        f"No subject {subject!r} in collection {collection!r}",
        collection=collection,
        subject=subject,
    )
