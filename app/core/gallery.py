"""The gallery seam: what the use cases, the live stream and the tools need of a face store.

Backends live in ``app.gallery`` (``embedded``: SQLite + FAISS in one process;
``postgres``: PostgreSQL + pgvector shared by many replicas) and are chosen by the
composition root through ``app.gallery.open_gallery``; nothing else names one.

Contract every backend honours (``tests/gallery/conformance`` checks it):

* One embedding space: a gallery is bound to one recognizer ``model_id`` and ``dim``
  and refuses to open for another (``GalleryModelMismatch``).
* Durability: a write has committed when it returns; an acknowledged write
  survives the process being killed.
* Collections are namespaces; nothing crosses them. Names (collections, subjects)
  are any well-formed Unicode of at most 1024 bytes of UTF-8, without NUL
  (``app.gallery.values``); others are ``InvalidRequest``.
* One subject per look-alike name within a collection (``app.core.names.name_key``):
  creating a subject whose key another subject holds raises ``NameConflict``, decided
  by the store's unique constraint in the creating transaction (replicas included);
  more faces under the exact same name are accepted.
* Searches return, per query, up to ``top_k`` distinct subjects ranked by their most
  similar face (cosine = dot product of unit vectors), best first; never fewer than
  ``top_k`` while the collection holds that many subjects.
* Thread-safe: every method may be called from several worker threads at once.
* Errors are domain errors (``SubjectNotFound``, ``FaceNotFound``,
  ``InvalidRequest``, ``GalleryUnavailable`` when the store cannot be reached;
  its ``DatabaseUnavailable`` when a shared database is away for now: retry).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.core.types import FaceRecord, FloatArray, NewFace, SearchHit, SubjectSummary


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk import did: faces added, and faces already present (re-runs are safe)."""

    added: int
    existing: int


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """Consecutive faces of one collection, as exported (``face_ids[i]`` is row ``i``)."""

    subjects: list[str]
    face_ids: list[str]
    embeddings: FloatArray  # (len(subjects), dim) float32, unit norm


class Gallery(Protocol):
    """Faces of enrolled subjects, per collection, searchable by embedding."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    # --- writes (committed when they return) ------------------------------------------

    def add_faces(
        self, collection: str, subject: str, faces: Sequence[NewFace]
    ) -> list[tuple[FaceRecord, bool]]:
        """Enroll faces of one subject atomically: one ``(record, created)`` per face, in
        order; ``created`` is False when this image was already enrolled for the subject."""
        ...

    def add_faces_bulk(self, collection: str, faces: Sequence[tuple[str, NewFace]]) -> BulkResult:
        """Enroll many ``(subject, face)`` pairs in one transaction (imports, migrations).

        Idempotent like ``add_faces``: a face whose ``(subject, image_sha256)`` is
        already in the collection is counted as existing and left alone.
        """
        ...

    def delete_subject(self, collection: str, subject: str) -> int:
        """Delete a subject and all its faces; returns how many faces went."""
        ...

    def delete_face(self, collection: str, face_id: str) -> FaceRecord:
        """Delete one face; a subject left without faces is deleted too."""
        ...

    # --- searches -----------------------------------------------------------------------

    def search(self, collection: str, embeddings: FloatArray, top_k: int) -> list[list[SearchHit]]:
        """For each query row of (N, dim) ``embeddings``: up to ``top_k`` subjects, best first."""
        ...

    def best_match_for_subject(
        self, collection: str, subject: str, embedding: FloatArray
    ) -> SearchHit:
        """Highest similarity of ``embedding`` (dim,) to any face of ``subject``."""
        ...

    # --- reads --------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Number of faces per non-empty collection (cheap: callers poll it)."""
        ...

    def total_faces(self) -> int: ...

    def collection_version(self, collection: str) -> int:
        """A number that changes whenever the collection's faces change, on any replica.

        Cheap enough to call for every live frame (in memory; no round trip).
        """
        ...

    def list_subjects(
        self, collection: str, *, limit: int, offset: int
    ) -> tuple[list[SubjectSummary], int]:
        """One page of subjects ordered by name, and the collection's subject total."""
        ...

    def get_subject(
        self, collection: str, subject: str
    ) -> tuple[SubjectSummary, list[FaceRecord]]: ...

    def look_alike_of(self, collection: str, subject: str) -> str | None:
        """The other subject whose name looks like ``subject`` (one index lookup), or None
        when ``subject`` exists or may be created. A cheap check before inference; the
        write itself decides (``NameConflict``)."""
        ...

    def aligned_crops(self, collection: str | None = None) -> Iterator[tuple[FaceRecord, bytes]]:
        """Every stored aligned crop (PNG) with its face, e.g. to re-embed with a new model."""
        ...

    def face_crop(self, collection: str, face_id: str) -> bytes | None:
        """One face's stored 112x112 aligned crop (PNG), None when it was stored without
        one; ``FaceNotFound`` when the collection holds no such face."""
        ...

    def export_embeddings(self, collection: str, *, batch_size: int) -> Iterator[EmbeddingBatch]:
        """Every face of a collection in a stable order, ``batch_size`` at a time."""
        ...

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Release connections, files and locks; safe to call twice."""
        ...
