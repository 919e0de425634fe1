"""The in-memory FAISS index of one collection, and the best-face-per-subject ranking.

An index is a cache rebuilt from SQLite; it is never written to disk. It is not
thread-safe by itself: ``Gallery`` reads it under a shared lock and changes it
under an exclusive one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np
from numpy.typing import NDArray

from app.core.types import FloatArray, SearchHit

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


class CollectionIndex:
    """Exact inner-product FAISS index of one collection plus id -> subject maps."""

    def __init__(self, dim: int) -> None:
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._faces: dict[int, tuple[str, str]] = {}  # FAISS id -> (subject, face_id)
        self._ids_by_subject: dict[str, set[int]] = {}

    @property
    def face_count(self) -> int:
        return len(self._faces)

    def add(
        self,
        ids: Sequence[int],
        embeddings: FloatArray,
        subjects: Sequence[str],
        face_ids: Sequence[str],
    ) -> None:
        """Add faces; ``embeddings`` is (len(ids), D) float32, unit norm."""
        if not ids:
            return
        self._index.add_with_ids(embeddings, np.asarray(ids, dtype=np.int64))
        for faiss_id, subject, face_id in zip(ids, subjects, face_ids, strict=True):
            self._faces[faiss_id] = (subject, face_id)
            self._ids_by_subject.setdefault(subject, set()).add(faiss_id)

    def remove(self, ids: Sequence[int]) -> None:
        """Remove faces by FAISS id; unknown ids are ignored."""
        known = [faiss_id for faiss_id in ids if faiss_id in self._faces]
        if not known:
            return
        self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(known, dtype=np.int64)))
        for faiss_id in known:
            subject, _ = self._faces.pop(faiss_id)
            subject_ids = self._ids_by_subject[subject]
            subject_ids.discard(faiss_id)
            if not subject_ids:
                del self._ids_by_subject[subject]

    def search(self, queries: FloatArray, top_k: int) -> list[list[SearchHit]]:
        """For each query (N, D): up to ``top_k`` subjects by their best face, best first."""
        results: list[list[SearchHit]] = [[] for _ in range(len(queries))]
        total = self.face_count
        if total == 0 or len(queries) == 0:
            return results
        wanted = min(top_k, len(self._ids_by_subject))
        neighbours = min(total, top_k * INITIAL_FACES_PER_SUBJECT)
        pending = list(range(len(queries)))
        while pending:
            similarities, ids = self._index.search(queries[pending], neighbours)
            still_short: list[int] = []
            for row, query in enumerate(pending):
                hits = best_hit_per_subject(
                    similarities[row], ids[row], self._faces.__getitem__, top_k
                )
                # Enough distinct subjects in the neighbour list means every subject
                # missing from it ranks below all of them: the answer is final.
                if len(hits) >= wanted or neighbours == total:
                    results[query] = hits
                else:
                    still_short.append(query)
            pending = still_short
            neighbours = min(total, neighbours * GROWTH)
        return results

    def best_match(self, subject: str, query: FloatArray) -> SearchHit | None:
        """Highest similarity of ``query`` (D,) to any face of ``subject``; None if unknown."""
        subject_ids = self._ids_by_subject.get(subject)
        if not subject_ids:
            return None
        ids = np.sort(np.fromiter(subject_ids, dtype=np.int64, count=len(subject_ids)))
        vectors = self._index.reconstruct_batch(ids)
        similarities = vectors @ query
        best = int(np.argmax(similarities))
        _, face_id = self._faces[int(ids[best])]
        return SearchHit(
            subject=subject, similarity=_clip(float(similarities[best])), face_id=face_id
        )
