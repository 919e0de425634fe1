"""Rebuilding a collection's index while the old one keeps serving searches and writes.

A rebuild makes a fresh ``CollectionIndex`` of the source's live faces, of the kind
their number calls for (``IndexPolicy.kind_for``): exact -> HNSW when a collection
grows past the threshold, a compaction when tombstones pile up, HNSW -> exact when it
shrinks. Building an HNSW graph of a million faces takes minutes on two cores, so it
is done in steps:

* ``take`` copies the next chunk of the source (positions, vectors, subjects): the
  caller holds the source's lock shared, for milliseconds;
* ``absorb`` adds that chunk to the fresh index: no lock, this is the slow part, and
  the fresh index is private to the rebuild;
* ``finish`` copies what the source gained since, removes what it lost since (faces
  deleted after being copied), and returns the fresh index: the caller holds the
  writer lock, so nothing changes meanwhile, and then swaps it in.

Positions only ever get appended to the source, and a copied face can only die (its
row never changes), so those two catch-ups are all there is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.types import FloatArray
from app.gallery.embedded.index import CollectionIndex
from app.gallery.embedded.vectors import PositionArray

# Faces copied per step: bounds the copy (512-d: 32 MB) and the time the source's
# shared lock is held.
CHUNK = 16_384


@dataclass(frozen=True, slots=True)
class Chunk:
    positions: PositionArray  # in the source
    row_ids: list[int]
    vectors: FloatArray
    subjects: list[str]
    face_ids: list[str]


class Rebuild:
    """A fresh index of ``source``'s live faces, built a chunk at a time."""

    def __init__(self, source: CollectionIndex) -> None:
        self.source = source
        kind = source.policy.kind_for(source.face_count, source.kind)
        self.fresh = CollectionIndex(source.dim, source.policy, kind)
        self._cursor = 0  # source positions below this were looked at
        self._copied: list[PositionArray] = []

    @property
    def pending(self) -> int:
        """Source positions not yet looked at."""
        return self.source.position_count - self._cursor

    def take(self, limit: int = CHUNK) -> Chunk:
        """The next chunk of live source faces. Caller holds the source shared."""
        stop = min(self.source.position_count, self._cursor + limit)
        positions = self.source.live_positions(self._cursor, stop)
        self._cursor = stop
        row_ids, vectors, subjects, face_ids = self.source.rows_at(positions)
        return Chunk(positions, row_ids, vectors, subjects, face_ids)

    def absorb(self, chunk: Chunk) -> None:
        """Add a taken chunk to the fresh index. No lock needed."""
        self.fresh.add(chunk.row_ids, chunk.vectors, chunk.subjects, chunk.face_ids)
        self._copied.append(chunk.positions)

    def finish(self) -> CollectionIndex:
        """The fresh index, caught up with the source. Caller holds the writer lock."""
        while self.pending:
            self.absorb(self.take())
        if self._copied:
            copied = np.concatenate(self._copied)
            died = copied[~self.source.live_at(copied)]
            if len(died):
                self.fresh.remove(self.source.row_ids_at(died).tolist())
        return self.fresh


def rebuilt(source: CollectionIndex) -> CollectionIndex:
    """Rebuild in one go (nothing else may use ``source`` meanwhile)."""
    return Rebuild(source).finish()
