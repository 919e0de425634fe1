"""The durable face gallery: SQLite is the truth, FAISS an in-memory cache of it.

Layout of the data directory: ``gallery.sqlite3`` (plus its ``-wal``/``-shm``
files), ``gallery.lock`` and ``index/`` (the index snapshot, see ``snapshot``).
The directory must be on a local filesystem (WAL).

* Durability: every write is one SQLite transaction (WAL, ``synchronous=FULL``)
  and returns only after it committed, so an acknowledged write survives
  ``kill -9`` and power loss. FAISS is updated after the commit.
* Indexes: per collection, exact while small, HNSW above ``IndexPolicy.hnsw_min_faces``
  (``vectors``); changed incrementally on every write (tombstones for deletes),
  compacted or converted when ``CollectionIndex.wants_restructure`` says so, by a
  background rebuild (``rebuild``) while the old index keeps serving.
* Start-up: from a verified snapshot caught up from SQLite, or rebuilt from SQLite
  (``recovery``). Snapshots are written in the background and at close
  (``snapshotter``); a snapshot that is missing, stale, damaged or foreign is never
  used.
* One model per gallery: the model id and embedding dim are recorded at
  creation and checked at every open (``GalleryModelMismatch``).
* Collections are namespaces; nothing crosses them.
* Concurrency: searches share a readers-writer lock and run in parallel. A write
  holds ``_write_lock`` throughout (writes, restructures and snapshots are serial),
  the SQLite lock for its transaction, and then the index lock exclusively while it
  changes FAISS. Snapshots read the indexes without the index lock (no writer can
  change them), rebuilds copy from them under the shared index lock a chunk at a
  time, so searches go on meanwhile. Lock order: write -> SQLite -> index. One
  ``Gallery`` per directory (``DirectoryLock``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import numpy as np

from app.core.gallery import BulkResult, EmbeddingBatch
from app.core.thresholds import CollectionSettings
from app.core.types import FaceRecord, FloatArray, NewFace, SearchHit, SubjectSummary
from app.errors import FaceNotFound, GalleryUnavailable, InvalidRequest, SubjectNotFound
from app.gallery.embedded import repository, snapshot
from app.gallery.embedded.dirlock import DirectoryLock
from app.gallery.embedded.index import CollectionIndex
from app.gallery.embedded.rebuild import CHUNK, Rebuild
from app.gallery.embedded.recovery import Recovery, build_from_database, recover_indexes
from app.gallery.embedded.replica import ReplicaMixin
from app.gallery.embedded.rwlock import ReadWriteLock
from app.gallery.embedded.schema import DB_FILENAME, connect, ensure_schema
from app.gallery.embedded.snapshotter import (
    DEFAULT_SNAPSHOT_POLICY,
    SnapshotPolicy,
    SnapshotThread,
)
from app.gallery.embedded.vectors import DEFAULT_POLICY, IndexPolicy
from app.gallery.embedded.worker import Worker
from app.gallery.look_alikes import log_look_alikes
from app.gallery.values import require_text, validate_embeddings, validate_new_face
from app.storage.sqlite import format_timestamp, transaction, utc_now

__all__ = ["EmbeddedGallery"]

logger = logging.getLogger(__name__)

# Crops read per query by ``aligned_crops`` (~25 kB each), so a page is a few MB.
CROPS_PAGE_SIZE = 256
# A background rebuild swaps its index in (writes wait meanwhile) once fewer source
# faces than this are left to copy: a second or so of HNSW inserts.
FINISH_BELOW = 1024


class EmbeddedGallery(ReplicaMixin):
    """Faces of enrolled subjects, per collection, searchable by embedding."""

    def __init__(
        self,
        path: Path,
        *,
        model_id: str,
        dim: int,
        index_policy: IndexPolicy = DEFAULT_POLICY,
        snapshot_policy: SnapshotPolicy = DEFAULT_SNAPSHOT_POLICY,
    ) -> None:
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        path.mkdir(parents=True, exist_ok=True)
        self._model_id = model_id
        self._dim = dim
        self._policy = index_policy
        self._snapshot_policy = snapshot_policy
        self._snapshot_dir = path / snapshot.SNAPSHOT_DIRNAME
        self._write_lock = threading.Lock()  # one write, restructure or snapshot at a time
        self._db_lock = threading.Lock()  # guards the connection
        self._index_lock = ReadWriteLock()  # guards self._indexes
        self._closed = False
        self._sealed = False  # another generation serves: public writes refused (replica)
        self._versions: dict[str, int] = {}  # writes per collection since open
        self._snapshotter: SnapshotThread | None = None
        self._snapshotter_lock = threading.Lock()  # creating vs stopping the threads
        self._closing = False
        self._rebuilder: Worker | None = None
        self._rebuilding: set[str] = set()  # collections with a rebuild queued or running
        with ExitStack() as cleanup:
            self._directory_lock = DirectoryLock(path)
            cleanup.callback(self._directory_lock.release)
            db_path = path / DB_FILENAME
            self._db = connect(db_path)
            cleanup.callback(self._db.close)
            ensure_schema(self._db, db_path, model_id=model_id, dim=dim)
            log_look_alikes(repository.look_alike_counts(self._db))
            self._indexes = self._recover()
            cleanup.pop_all()
        with self._write_lock:
            for collection, index in self._indexes.items():
                if index.wants_restructure():
                    self._schedule_rebuild(collection, index)
        if self._snapshot_due():
            self._request_snapshot()

    def _recover(self) -> dict[str, CollectionIndex]:
        """The indexes at open, and the snapshot bookkeeping that follows from them."""
        try:
            indexes, recovery = recover_indexes(
                self._db,
                self._snapshot_dir,
                model_id=self._model_id,
                dim=self._dim,
                policy=self._policy,
            )
        except ValueError as exc:
            raise GalleryUnavailable(
                f"The gallery holds a damaged embedding: {exc}", path=str(self._snapshot_dir)
            ) from exc
        self.recovery: Recovery = recovery  # how this open obtained its indexes
        if recovery.from_snapshot:
            self._changes_since_snapshot = recovery.caught_up
            self._snapshot_stale = False
        else:
            # Nothing on disk is of use any more: forget it and the deletions it needed.
            with transaction(self._db):
                marks = repository.change_marks(self._db)
                repository.retire_snapshots(
                    self._db, keep=None, deletions_through=marks.last_deletion_seq
                )
            self._changes_since_snapshot = 0
            self._snapshot_stale = True
        faces = sum(index.face_count for index in indexes.values())
        logger.info(
            "gallery opened in %.2f s: %d faces in %d collections, model %s, %s",
            recovery.seconds,
            faces,
            len(indexes),
            self._model_id,
            f"from the index snapshot + {recovery.caught_up} changes caught up"
            if recovery.from_snapshot
            else "indexes built from the database",
        )
        return indexes

    def index_kinds(self) -> dict[str, str]:
        """The structure searching each non-empty collection ("exact" or "hnsw")."""
        with self._index_lock.read():
            self._require_open()
            return {name: index.kind.value for name, index in sorted(self._indexes.items())}

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
        with self._write_lock:
            self._require_writable()
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
                self._apply(
                    collection,
                    len(added),
                    lambda index: index.add(
                        [faiss_id for faiss_id, _, _ in added],
                        embeddings,
                        [subject] * len(added),
                        [record.face_id for _, record, _ in added],
                    ),
                )
        return results

    def add_faces_bulk(self, collection: str, faces: Sequence[tuple[str, NewFace]]) -> BulkResult:
        """Enroll many ``(subject, face)`` pairs in one transaction; faces already there stay.

        One ``executemany`` for the rows and one index update for the batch.
        """
        require_text(collection, "collection")
        for subject, face in faces:
            require_text(subject, "subject")
            validate_new_face(face, self._dim)
        if not faces:
            return BulkResult(added=0, existing=0)
        with self._write_lock:
            self._require_writable()
            with self._db_lock:
                self._require_open()
                with transaction(self._db):
                    row_ids, positions, face_ids = repository.insert_faces_bulk(
                        self._db, collection, faces, model_id=self._model_id, now=utc_now()
                    )
            if row_ids:
                embeddings = np.ascontiguousarray(
                    np.stack([faces[position][1].embedding for position in positions]),
                    dtype=np.float32,
                )
                subjects = [faces[position][0] for position in positions]
                self._apply(
                    collection,
                    len(row_ids),
                    lambda index: index.add(row_ids, embeddings, subjects, face_ids),
                )
        return BulkResult(added=len(row_ids), existing=len(faces) - len(row_ids))

    def delete_subject(self, collection: str, subject: str) -> int:
        """Delete a subject and all its faces; returns how many faces went."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        with self._write_lock:
            self._require_writable()
            with self._db_lock:
                self._require_open()
                with transaction(self._db):
                    faiss_ids = repository.subject_face_ids(self._db, collection, subject)
                    if faiss_ids is None:
                        raise _subject_not_found(collection, subject)
                    repository.delete_subject(self._db, collection, subject)
            self._apply(collection, len(faiss_ids), lambda index: index.remove(faiss_ids))
        return len(faiss_ids)

    def delete_face(self, collection: str, face_id: str) -> FaceRecord:
        """Delete one face; a subject left without faces is deleted too."""
        require_text(collection, "collection")
        require_text(face_id, "face_id")
        with self._write_lock:
            self._require_writable()
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
            self._apply(collection, 1, lambda index: index.remove([faiss_id]))
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

    def look_alike_of(self, collection: str, subject: str) -> str | None:
        """The other subject whose name looks like ``subject``, unless ``subject`` exists."""
        require_text(collection, "collection")
        require_text(subject, "subject")
        with self._db_lock:
            self._require_open()
            return repository.look_alike_of(self._db, collection, subject)

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

    # --- collection settings (app.core.thresholds.CollectionSettingsStore) ----------------

    def collection_settings(self, collection: str) -> CollectionSettings:
        """The stored settings of ``collection`` (all None when none were stored)."""
        require_text(collection, "collection")
        with self._db_lock:
            self._require_open()
            row = self._db.execute(
                "SELECT target_fpir FROM collection_settings WHERE collection = ?", (collection,)
            ).fetchone()
        return CollectionSettings(target_fpir=None if row is None else row[0])

    def set_collection_settings(self, collection: str, settings: CollectionSettings) -> None:
        """Replace the collection's settings; committed (durably) when it returns."""
        require_text(collection, "collection")
        with self._write_lock, self._db_lock:
            self._require_writable()
            self._require_open()
            with transaction(self._db):
                self._db.execute(
                    "INSERT INTO collection_settings (collection, target_fpir, updated_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (collection) DO UPDATE "
                    "SET target_fpir = excluded.target_fpir, updated_at = excluded.updated_at",
                    (collection, settings.target_fpir, format_timestamp(utc_now())),
                )

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
        """Snapshot the indexes if due, release the database and the directory; safe to
        call twice."""
        with self._snapshotter_lock:
            self._closing = True
            snapshotter, self._snapshotter = self._snapshotter, None
            rebuilder = self._rebuilder
        if rebuilder is not None:
            if self._rebuilding:
                logger.info("finishing the index rebuild of %s before closing", self._rebuilding)
            rebuilder.stop()  # finishes the rebuilds queued: the last snapshot gets them
        if snapshotter is not None:
            snapshotter.stop()  # waits for a snapshot in progress
        with self._write_lock:
            if self._closed:
                return
            self._close_snapshot()
            with self._db_lock, self._index_lock.write():
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

    def _apply(
        self, collection: str, changed: int, change: Callable[[CollectionIndex], None]
    ) -> None:
        """Apply a committed change to the collection's index. Caller holds ``_write_lock``."""
        with self._index_lock.write():
            self._versions[collection] = self._versions.get(collection, 0) + 1
            index = self._indexes.get(collection) or CollectionIndex(self._dim, self._policy)
            try:
                change(index)
            except Exception:
                logger.exception("FAISS update failed; rebuilding %r from SQLite", collection)
                repaired = None
            else:
                repaired = index
        if repaired is None:
            # The change is committed; only the cache is off. Rebuild it from the truth.
            repaired = self._load_collection(collection)
        with self._index_lock.write():
            if repaired.face_count:
                self._indexes[collection] = repaired
            else:
                self._indexes.pop(collection, None)
        if repaired.face_count and repaired.wants_restructure():
            self._schedule_rebuild(collection, repaired)
        self._changes_since_snapshot += changed
        if self._snapshot_due():
            self._request_snapshot()

    # --- background rebuilds ------------------------------------------------------------

    def wait_until_indexed(self, timeout_s: float | None = None) -> bool:
        """Wait for the index rebuilds queued or running (tools, tests, benchmarks)."""
        with self._snapshotter_lock:
            rebuilder = self._rebuilder
        return rebuilder is None or rebuilder.wait_idle(timeout_s)

    def _schedule_rebuild(self, collection: str, index: CollectionIndex) -> None:
        """Queue a rebuild of ``index``. Caller holds ``_write_lock``."""
        if collection in self._rebuilding:
            return
        with self._snapshotter_lock:
            if self._closing:
                return  # the next open schedules it again
            if self._rebuilder is None:
                self._rebuilder = Worker("gallery-rebuild")
            self._rebuilding.add(collection)
            self._rebuilder.submit(lambda: self._rebuild(collection, index))

    def _rebuild(self, collection: str, index: CollectionIndex) -> None:
        """Build a fresh index of ``index``'s faces and swap it in, if still current."""
        try:
            started = time.perf_counter()
            rebuild = Rebuild(index)
            while rebuild.pending > FINISH_BELOW:
                with self._index_lock.read():
                    chunk = rebuild.take(CHUNK)
                rebuild.absorb(chunk)
            with self._write_lock:
                if self._closed or self._indexes.get(collection) is not index:
                    logger.info("index rebuild of %r dropped: the index was replaced", collection)
                    return
                fresh = rebuild.finish()
                with self._index_lock.write():
                    if fresh.face_count:
                        self._indexes[collection] = fresh
                    else:
                        self._indexes.pop(collection, None)
                self._snapshot_stale = True
                self._rebuilding.discard(collection)
                if fresh.face_count and fresh.wants_restructure():
                    self._schedule_rebuild(collection, fresh)
                due = self._snapshot_due()
            logger.info(
                "collection %r re-indexed: %s (%d positions) -> %s (%d faces) in %.1f s",
                collection,
                index.kind.value,
                index.position_count,
                fresh.kind.value,
                fresh.face_count,
                time.perf_counter() - started,
            )
            if due:
                self._request_snapshot()
        finally:
            with self._write_lock:
                self._rebuilding.discard(collection)

    def _load_collection(self, collection: str) -> CollectionIndex:
        """Build a collection's index from SQLite. Caller holds ``_write_lock``."""
        with self._db_lock:
            try:
                return build_from_database(self._db, collection, dim=self._dim, policy=self._policy)
            except ValueError as exc:
                raise GalleryUnavailable(
                    f"The gallery holds a damaged embedding in collection {collection!r}: {exc}",
                    collection=collection,
                ) from exc

    # --- snapshots ----------------------------------------------------------------------

    def _faces_held(self) -> int:
        """Live faces over all indexes. Caller holds ``_write_lock``."""
        return sum(index.face_count for index in self._indexes.values())

    def _snapshot_due(self) -> bool:
        policy = self._snapshot_policy
        if self._rebuilding or self._faces_held() < policy.min_faces:
            return False  # a rebuild asks for one when it is done
        return self._snapshot_stale or self._changes_since_snapshot >= policy.every_changes

    def _request_snapshot(self) -> None:
        with self._snapshotter_lock:
            if self._closing:
                return  # close() writes the last one
            if self._snapshotter is None:
                self._snapshotter = SnapshotThread(
                    self._background_snapshot,
                    min_interval_s=self._snapshot_policy.min_interval_s,
                )
            self._snapshotter.request()

    def _background_snapshot(self) -> None:
        with self._write_lock:
            if not self._closed and self._snapshot_due():
                self._write_snapshot()

    def _close_snapshot(self) -> None:
        """At close: a last snapshot if anything changed, none for a small gallery.

        Caller holds ``_write_lock``. A failure is logged: SQLite has everything.
        """
        try:
            if self._faces_held() < self._snapshot_policy.min_faces:
                self._drop_snapshot()
            elif self._snapshot_stale or self._changes_since_snapshot:
                self._write_snapshot()
        except Exception:
            logger.exception("index snapshot at close failed; the next start rebuilds")

    def _write_snapshot(self) -> None:
        """Write a snapshot of every index. Caller holds ``_write_lock``."""
        started = time.perf_counter()
        token = uuid.uuid4().hex
        with self._db_lock, transaction(self._db):
            marks = repository.change_marks(self._db)
            repository.record_snapshot(self._db, token, marks, utc_now())
        snapshot.write_snapshot(
            self._snapshot_dir,
            self._indexes,
            token=token,
            marks=marks,
            model_id=self._model_id,
            dim=self._dim,
        )
        with self._db_lock, transaction(self._db):
            repository.retire_snapshots(
                self._db, keep=token, deletions_through=marks.last_deletion_seq
            )
        self._changes_since_snapshot = 0
        self._snapshot_stale = False
        logger.info(
            "index snapshot written: %d faces in %d collections in %.1f s",
            self._faces_held(),
            len(self._indexes),
            time.perf_counter() - started,
        )

    def _drop_snapshot(self) -> None:
        """Remove the snapshot of a gallery too small to need one (and its log)."""
        if not self._snapshot_dir.exists():
            return
        snapshot.remove_snapshot(self._snapshot_dir)
        with self._db_lock, transaction(self._db):
            marks = repository.change_marks(self._db)
            repository.retire_snapshots(
                self._db, keep=None, deletions_through=marks.last_deletion_seq
            )


def _subject_not_found(collection: str, subject: str) -> SubjectNotFound:
    return SubjectNotFound(
        f"No subject {subject!r} in collection {collection!r}",
        collection=collection,
        subject=subject,
    )
