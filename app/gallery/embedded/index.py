"""The in-memory index of one collection, and the best-face-per-subject ranking.

An index is a cache of SQLite: built from it, or loaded from a verified snapshot
and caught up from it (``recovery``). Faces are kept by *position* in the order
they were added; a face's SQLite row id ("FAISS id" in the gallery's vocabulary)
is found by binary search, since row ids only ever grow (AUTOINCREMENT) and faces
are added in row id order. Deletes are tombstones (a bitmap of live positions)
until enough of them accumulate to compact the index.

Not thread-safe by itself: ``Gallery`` reads it under a shared lock and changes
it under an exclusive one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from app.core.types import FloatArray, SearchHit
from app.gallery.embedded.columns import Column
from app.gallery.embedded.vectors import (
    DEFAULT_POLICY,
    Bitmap,
    FaissVectors,
    IndexKind,
    IndexPolicy,
    PositionArray,
)

IdArray = NDArray[np.int64]

# First guess of how many neighbours per wanted subject fill top_k distinct
# subjects; galleries usually hold a handful of faces per subject. The search
# widens by GROWTH until it has enough subjects or has seen every face.
INITIAL_FACES_PER_SUBJECT = 4
GROWTH = 4


def best_hit_per_subject(
    similarities: FloatArray,
    ids: IdArray,
    describe: Callable[[int], tuple[str, str]],
    top_k: int,
) -> list[SearchHit]:
    """Collapse one query's neighbour list (best first) to each subject's best face.

    ``describe`` maps a FAISS id to ``(subject, face_id)``; ids < 0 (FAISS padding)
    are skipped. Returns at most ``top_k`` hits, best first.
    """
    hits: list[SearchHit] = []
    seen: set[str] = set()
    for similarity, faiss_id in zip(similarities.tolist(), ids.tolist(), strict=True):
        if faiss_id < 0:
            continue
        subject, face_id = describe(faiss_id)
        if subject in seen:
            continue
        seen.add(subject)
        hits.append(SearchHit(subject=subject, similarity=_clip(similarity), face_id=face_id))
        if len(hits) == top_k:
            break
    return hits


def _clip(similarity: float) -> float:
    # Unit vectors: float32 rounding can push a self-match just past 1.0.
    return min(1.0, max(-1.0, similarity))


@dataclass(frozen=True, slots=True)
class IndexState:
    """Everything a snapshot stores of one collection's index (see ``snapshot``)."""

    faiss_index: faiss.Index
    row_ids: IdArray  # (P,) ascending
    live: NDArray[np.bool_]  # (P,)
    subject_codes: NDArray[np.int32]  # (P,) into subject_names
    face_ids: NDArray[np.bytes_]  # (P,) UTF-8
    subject_names: list[str]


class CollectionIndex:
    """FAISS vectors of one collection plus position -> (row id, subject, face id) maps."""

    def __init__(
        self, dim: int, policy: IndexPolicy = DEFAULT_POLICY, kind: IndexKind = IndexKind.EXACT
    ) -> None:
        self._dim = dim
        self._policy = policy
        self._vectors = FaissVectors.empty(kind, dim, policy)
        self._row_ids = Column(np.int64)
        self._live = Column(np.bool_)
        self._bitmap = Column(np.uint8)  # ``_live`` packed little-endian, for FAISS selectors
        self._codes = Column(np.int32)
        self._face_ids = Column(np.bytes_)
        self._names: list[str] = []
        self._code_of: dict[str, int] = {}
        self._live_per_code = Column(np.int64)
        self._live_faces = 0
        self._live_subjects = 0

    # --- sizes ------------------------------------------------------------------------

    @property
    def kind(self) -> IndexKind:
        return self._vectors.kind

    @property
    def face_count(self) -> int:
        """Live faces."""
        return self._live_faces

    @property
    def subject_count(self) -> int:
        return self._live_subjects

    @property
    def position_count(self) -> int:
        """Positions held, tombstones included."""
        return len(self._row_ids)

    # --- changes ----------------------------------------------------------------------

    def add(
        self,
        ids: Sequence[int],
        embeddings: FloatArray,
        subjects: Sequence[str],
        face_ids: Sequence[str],
    ) -> None:
        """Add faces; ``ids`` ascending and above every id already added (SQLite row ids
        from AUTOINCREMENT are), ``embeddings`` (len(ids), D) float32, unit norm."""
        if not ids:
            return
        row_ids = np.asarray(ids, dtype=np.int64)
        if not len(embeddings) == len(subjects) == len(face_ids) == len(row_ids):
            raise ValueError("ids, embeddings, subjects and face_ids differ in length")
        floor = int(self._row_ids.view[-1]) if len(self._row_ids) else -1
        if np.any(np.diff(row_ids) <= 0) or row_ids[0] <= floor:
            raise ValueError(f"faces must be added in ascending row id order above {floor}")
        codes = np.fromiter((self._code(subject) for subject in subjects), np.int32, len(ids))
        encoded = np.array([face_id.encode("utf-8") for face_id in face_ids], dtype=np.bytes_)
        self._vectors.add(embeddings)
        start = len(self._row_ids)
        self._row_ids.extend(row_ids)
        self._live.extend(np.ones(len(row_ids), dtype=np.bool_))
        self._codes.extend(codes)
        self._face_ids.extend(encoded)
        np.add.at(self._live_per_code.view, codes, 1)
        self._live_faces += len(row_ids)
        self._live_subjects = int(np.count_nonzero(self._live_per_code.view))
        self._repack(start, len(self._row_ids))

    def remove(self, ids: Sequence[int]) -> None:
        """Remove faces by row id; unknown or already removed ids are ignored."""
        positions = self._positions_of(np.asarray(ids, dtype=np.int64))
        if len(positions) == 0:
            return
        live = self._live.view
        positions = np.unique(positions[live[positions]])
        if len(positions) == 0:
            return
        live[positions] = False
        clear = np.invert(np.left_shift(np.uint8(1), (positions & 7).astype(np.uint8)))
        np.bitwise_and.at(self._bitmap.view, positions >> 3, clear)
        np.subtract.at(self._live_per_code.view, self._codes.view[positions], 1)
        self._live_faces -= len(positions)
        self._live_subjects = int(np.count_nonzero(self._live_per_code.view))

    # --- searches ---------------------------------------------------------------------

    def search(self, queries: FloatArray, top_k: int) -> list[list[SearchHit]]:
        """For each query (N, D): up to ``top_k`` subjects by their best face, best first."""
        results: list[list[SearchHit]] = [[] for _ in range(len(queries))]
        total = self._live_faces
        if total == 0 or len(queries) == 0:
            return results
        wanted = min(top_k, self._live_subjects)
        live = self._live_bitmap()
        neighbours = min(total, top_k * INITIAL_FACES_PER_SUBJECT)
        ef_search = self._policy.ef_search_for(total)
        pending = list(range(len(queries)))
        while pending:
            exact = neighbours >= total or neighbours > self._policy.max_ann_neighbours
            similarities, positions = self._vectors.search(
                queries[pending], neighbours, live, exact=exact, ef_search=ef_search
            )
            still_short: list[int] = []
            for row, query in enumerate(pending):
                hits = best_hit_per_subject(
                    similarities[row], positions[row], self._describe, top_k
                )
                # Enough distinct subjects in the neighbour list means every subject
                # missing from it ranks below all of them (exactly, or as far as the
                # graph search saw): the answer is final. So is an exact list of all.
                if len(hits) >= wanted or (exact and neighbours >= total):
                    results[query] = hits
                else:
                    still_short.append(query)
            pending = still_short
            neighbours = min(total, neighbours * GROWTH)
        return results

    def best_match(self, subject: str, query: FloatArray) -> SearchHit | None:
        """Highest similarity of ``query`` (D,) to any face of ``subject``; None if unknown."""
        code = self._code_of.get(subject)
        if code is None or self._live_per_code.view[code] == 0:
            return None
        positions = np.flatnonzero((self._codes.view == code) & self._live.view)
        similarities = self._vectors.reconstruct(positions) @ query
        best = int(np.argmax(similarities))
        return SearchHit(
            subject=subject,
            similarity=_clip(float(similarities[best])),
            face_id=self._face_ids.view[positions[best]].decode("utf-8"),
        )

    # --- structure --------------------------------------------------------------------

    def wants_restructure(self) -> bool:
        """True when the structure no longer fits the size, or tombstones pile up."""
        if self._policy.kind_for(self._live_faces, self.kind) is not self.kind:
            return True
        dead = self.position_count - self._live_faces
        return dead > 0 and dead >= self._policy.max_dead_fraction * self.position_count

    # --- reads for a rebuild (``rebuild``) -------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def policy(self) -> IndexPolicy:
        return self._policy

    def live_positions(self, start: int, stop: int) -> PositionArray:
        """Live positions in ``[start, stop)``."""
        found: PositionArray = start + np.flatnonzero(self._live.view[start:stop])
        return found

    def live_at(self, positions: PositionArray) -> NDArray[np.bool_]:
        flags: NDArray[np.bool_] = self._live.view[positions]
        return flags

    def row_ids_at(self, positions: PositionArray) -> IdArray:
        row_ids: IdArray = self._row_ids.view[positions]
        return row_ids

    def rows_at(
        self, positions: PositionArray
    ) -> tuple[list[int], FloatArray, list[str], list[str]]:
        """Row ids, vectors (copies), subjects and face ids of the given positions."""
        names = self._names
        return (
            self._row_ids.view[positions].tolist(),
            self._vectors.reconstruct(positions),
            [names[code] for code in self._codes.view[positions].tolist()],
            [face_id.decode("utf-8") for face_id in self._face_ids.view[positions].tolist()],
        )

    # --- snapshots --------------------------------------------------------------------

    def state(self) -> IndexState:
        """This index as arrays (views: valid until the next change)."""
        return IndexState(
            faiss_index=self._vectors.faiss_index,
            row_ids=self._row_ids.view,
            live=self._live.view,
            subject_codes=self._codes.view,
            face_ids=self._face_ids.view,
            subject_names=self._names,
        )

    @classmethod
    def from_state(cls, state: IndexState, *, dim: int, policy: IndexPolicy) -> CollectionIndex:
        """Rebuild an index from a snapshot's arrays, checking that they fit together."""
        vectors = FaissVectors.adopt(state.faiss_index, dim=dim)
        count = vectors.count
        arrays: dict[str, np.ndarray[Any, Any]] = {
            "row_ids": state.row_ids,
            "live": state.live,
            "subject_codes": state.subject_codes,
            "face_ids": state.face_ids,
        }
        for name, array in arrays.items():
            if array.ndim != 1 or len(array) != count:
                raise ValueError(f"{name} has shape {array.shape}, expected ({count},)")
        if count and (np.any(np.diff(state.row_ids) <= 0) or state.row_ids[0] < 0):
            raise ValueError("row ids are not non-negative and strictly ascending")
        codes = np.asarray(state.subject_codes, dtype=np.int32)
        live = np.asarray(state.live, dtype=np.bool_)
        if count and (codes.min() < 0 or codes.max() >= len(state.subject_names)):
            raise ValueError("subject codes point outside the subject names")
        if len(set(state.subject_names)) != len(state.subject_names):
            raise ValueError("subject names are not distinct")
        index = cls(dim, policy, vectors.kind)
        index._vectors = vectors
        index._row_ids = Column(np.int64, state.row_ids)
        index._live = Column(np.bool_, live)
        index._codes = Column(np.int32, codes)
        index._face_ids = Column(state.face_ids.dtype, state.face_ids)
        index._names = list(state.subject_names)
        index._code_of = {name: code for code, name in enumerate(index._names)}
        per_code = np.bincount(codes[live], minlength=len(index._names))
        index._live_per_code = Column(np.int64, per_code)
        index._live_faces = int(np.count_nonzero(live))
        index._live_subjects = int(np.count_nonzero(per_code))
        index._repack(0, count)
        return index

    # --- internals --------------------------------------------------------------------

    def _code(self, subject: str) -> int:
        code = self._code_of.get(subject)
        if code is None:
            code = len(self._names)
            self._names.append(subject)
            self._code_of[subject] = code
            self._live_per_code.extend(np.zeros(1, dtype=np.int64))
        return code

    def _describe(self, position: int) -> tuple[str, str]:
        return (
            self._names[int(self._codes.view[position])],
            self._face_ids.view[position].decode("utf-8"),
        )

    def _positions_of(self, row_ids: IdArray) -> PositionArray:
        """Positions of the given row ids that this index holds (live or dead)."""
        known = self._row_ids.view
        if len(known) == 0 or len(row_ids) == 0:
            return np.empty(0, dtype=np.int64)
        positions = np.searchsorted(known, row_ids)
        inside = positions < len(known)
        positions = positions[inside]
        found: PositionArray = positions[known[positions] == row_ids[inside]].astype(np.int64)
        return found

    def _live_bitmap(self) -> Bitmap | None:
        """The packed live bitmap for FAISS, or None when nothing is dead."""
        if self._live_faces == self.position_count:
            return None
        return self._bitmap.view

    def _repack(self, start: int, stop: int) -> None:
        """Refresh the packed bytes covering positions [start, stop)."""
        first, last = start // 8, (stop + 7) // 8
        packed = np.packbits(self._live.view[first * 8 : last * 8], bitorder="little")
        missing = last - len(self._bitmap)
        if missing > 0:
            self._bitmap.extend(np.zeros(missing, dtype=np.uint8))
        self._bitmap.view[first:last] = packed
