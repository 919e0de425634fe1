"""Look-alikes: pairs of different enrolled subjects whose faces are the closest.

For each enrolled face, the gallery's own search finds the nearest subjects (two: one
may be the face's own); the nearest other subject makes a candidate pair, and each pair
of subjects keeps its most similar two faces. The cost is one top-2 search per face
(never all pairs), done once per collection version (``LookalikeReports`` caches it,
one computation at a time per collection) and capped at ``max_faces`` faces; a report
over a larger collection says it is partial.

Two different people this close defeat any threshold between them: identification
flags a match to such a subject (``flag``), and an operator sees the pairs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from app.core.gallery import Gallery

# Faces searched per gallery call while scanning a collection.
SCAN_BATCH = 256
# Nearest subjects per face: the face's own subject, and the nearest other one.
SCAN_TOP_K = 2


@dataclass(frozen=True, slots=True)
class LookalikePair:
    subject_a: str  # a < b, by code point
    subject_b: str
    similarity: float
    face_a: str  # face ids of the closest two faces
    face_b: str


@dataclass(frozen=True, slots=True)
class LookalikeReport:
    collection: str
    version: int  # the collection version it describes
    faces_scanned: int
    complete: bool  # False: the collection had more faces than the scan cap
    pairs: tuple[LookalikePair, ...]  # most similar first

    def partners(self, subject: str, threshold: float) -> list[tuple[str, float]]:
        """Subjects with a face at or above ``threshold`` to one of ``subject``'s faces."""
        found = []
        for pair in self.pairs:
            if pair.similarity < threshold:
                break
            if subject == pair.subject_a:
                found.append((pair.subject_b, pair.similarity))
            elif subject == pair.subject_b:
                found.append((pair.subject_a, pair.similarity))
        return found


def scan_lookalikes(
    gallery: Gallery, collection: str, *, max_faces: int, keep: int
) -> LookalikeReport:
    """Each face's nearest other subject, as the ``keep`` most similar subject pairs."""
    version = gallery.collection_version(collection)
    best: dict[tuple[str, str], LookalikePair] = {}
    scanned = 0
    complete = True
    for batch in gallery.export_embeddings(collection, batch_size=SCAN_BATCH):
        room = max_faces - scanned
        if room <= 0:
            complete = False
            break
        rows = min(room, len(batch.subjects))
        hits = gallery.search(collection, batch.embeddings[:rows], SCAN_TOP_K)
        for subject, face_id, found in zip(batch.subjects, batch.face_ids, hits, strict=False):
            other = next((hit for hit in found if hit.subject != subject), None)
            if other is None:
                continue
            pair = _ordered(subject, face_id, other.subject, other.face_id, other.similarity)
            key = (pair.subject_a, pair.subject_b)
            if key not in best or best[key].similarity < pair.similarity:
                best[key] = pair
        scanned += rows
        if rows < len(batch.subjects):
            complete = False
            break
    ranked = sorted(best.values(), key=lambda p: (-p.similarity, p.subject_a, p.subject_b))
    return LookalikeReport(collection, version, scanned, complete, tuple(ranked[:keep]))


def _ordered(
    subject: str, face_id: str, other: str, other_face: str, similarity: float
) -> LookalikePair:
    if subject < other:
        return LookalikePair(subject, other, similarity, face_id, other_face)
    return LookalikePair(other, subject, similarity, other_face, face_id)


class LookalikeReports:
    """The latest report per collection; recomputed only when the collection changed.
    One scan at a time per collection: concurrent callers wait for it and share it."""

    def __init__(self, gallery: Gallery, *, max_faces: int, keep: int) -> None:
        self.gallery = gallery
        self.max_faces = max_faces
        self.keep = keep
        self._lock = threading.Lock()
        self._scanning: dict[str, threading.Lock] = {}
        self._reports: dict[str, LookalikeReport] = {}

    def current(self, collection: str) -> LookalikeReport:
        """The report of the collection as it is now (scanning it if it changed)."""
        with self._lock:
            scan_lock = self._scanning.setdefault(collection, threading.Lock())
        with scan_lock:
            version = self.gallery.collection_version(collection)
            with self._lock:
                known = self._reports.get(collection)
            if known is not None and known.version == version:
                return known
            report = scan_lookalikes(
                self.gallery, collection, max_faces=self.max_faces, keep=self.keep
            )
            with self._lock:
                self._reports[collection] = report
            return report

    def latest(self, collection: str) -> LookalikeReport | None:
        """The last report computed, whatever version it describes (never scans)."""
        with self._lock:
            return self._reports.get(collection)
