"""Look-alikes: pairs of different enrolled subjects whose faces are the closest.

For each enrolled face, the gallery's own search finds the nearest subjects (two: one
may be the face's own); the nearest other subject makes a candidate pair, and each pair
of subjects keeps its most similar two faces. The cost is one top-2 search per face
(never all pairs), done once per collection version (``LookalikeReports`` caches it,
one computation at a time per collection) and capped at ``max_faces`` faces; a report
over a larger collection says it is partial.

Two different people this close defeat any threshold between them: identification
flags a match to such a subject, and an operator sees the pairs. The flags come from
``LookalikeReports.for_flags``: the latest report, never waited for; a collection with
no report yet on this process, or one that changed since its report more than
``refresh_s`` ago, gets one scan started in the background (one at a time per
collection, each batch of searches holding one of the CPU slots requests use).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from app.core.gallery import Gallery

logger = logging.getLogger(__name__)

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


class ScanStopped(Exception):
    """A background scan was told to stop (the service is closing)."""


def scan_lookalikes(
    gallery: Gallery,
    collection: str,
    *,
    max_faces: int,
    keep: int,
    slot: AbstractContextManager[object] | None = None,
    stop: threading.Event | None = None,
) -> LookalikeReport:
    """Each face's nearest other subject, as the ``keep`` most similar subject pairs.

    ``slot`` is held around each batch of searches; ``stop`` ends the scan between
    batches (``ScanStopped``)."""
    version = gallery.collection_version(collection)
    best: dict[tuple[str, str], LookalikePair] = {}
    scanned = 0
    complete = True
    for batch in gallery.export_embeddings(collection, batch_size=SCAN_BATCH):
        room = max_faces - scanned
        if room <= 0:
            complete = False
            break
        if stop is not None and stop.is_set():
            raise ScanStopped(collection)
        rows = min(room, len(batch.subjects))
        with slot or nullcontext():
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

    def __init__(
        self,
        gallery: Gallery,
        *,
        max_faces: int,
        keep: int,
        refresh_s: float = 300.0,
        slot: AbstractContextManager[object] | None = None,
    ) -> None:
        """``refresh_s``: how long a changed collection's report may serve the flags
        before a background scan replaces it. ``slot``: held by background scans around
        each batch of searches (the service's CPU slots), so requests keep their share."""
        self.gallery = gallery
        self.max_faces = max_faces
        self.keep = keep
        self.refresh_s = refresh_s
        self._slot = slot
        self._lock = threading.Lock()
        self._scanning: dict[str, threading.Lock] = {}
        self._reports: dict[str, LookalikeReport] = {}
        self._scanned_at: dict[str, float] = {}  # monotonic time of the last scan
        self._background: dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    def current(self, collection: str) -> LookalikeReport:
        """The report of the collection as it is now (scanning it if it changed)."""
        return self._current(collection, slot=None)

    def _current(
        self, collection: str, *, slot: AbstractContextManager[object] | None
    ) -> LookalikeReport:
        with self._lock:
            scan_lock = self._scanning.setdefault(collection, threading.Lock())
        with scan_lock:
            version = self.gallery.collection_version(collection)
            with self._lock:
                known = self._reports.get(collection)
            if known is not None and known.version == version:
                return known
            report = scan_lookalikes(
                self.gallery,
                collection,
                max_faces=self.max_faces,
                keep=self.keep,
                slot=slot,
                stop=self._stop,
            )
            with self._lock:
                self._reports[collection] = report
                self._scanned_at[collection] = time.monotonic()
            return report

    def latest(self, collection: str) -> LookalikeReport | None:
        """The last report computed, whatever version it describes (never scans)."""
        with self._lock:
            return self._reports.get(collection)

    def for_flags(self, collection: str) -> LookalikeReport | None:
        """``latest``, never waiting; starts a background scan when the collection has
        no report yet, or may have changed and its last scan is ``refresh_s`` old."""
        with self._lock:
            known = self._reports.get(collection)
            running = self._background.get(collection)
            last = self._scanned_at.get(collection)
            now = time.monotonic()
            due = (
                not self._stop.is_set()
                and (running is None or not running.is_alive())
                and (last is None or now - last >= self.refresh_s)
            )
            if due:
                # From the start: a failed scan is retried ``refresh_s`` later, not at
                # once, and an unchanged collection costs one version read per period.
                self._scanned_at[collection] = now
                thread = threading.Thread(
                    target=self._refresh, args=(collection,), name="lookalikes", daemon=True
                )
                self._background[collection] = thread
                thread.start()
        return known

    def _refresh(self, collection: str) -> None:
        try:
            self._current(collection, slot=self._slot)
        except ScanStopped:
            pass
        except Exception:  # the flags stay as they were; the next due call tries again
            logger.exception("look-alike scan of collection %r failed", collection)

    def settle(self, timeout_s: float) -> bool:
        """Wait for the background scans running now; False if one is still running."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._background.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop background scans (between two batches) and wait for them."""
        self._stop.set()
        with self._lock:
            threads = list(self._background.values())
        for thread in threads:
            thread.join(timeout_s)
