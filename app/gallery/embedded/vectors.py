"""The FAISS structures of a collection: exact (flat) or HNSW, chosen by size.

Vectors are addressed by *position* (0, 1, 2, ... in the order they were added);
nothing is ever removed from a structure. Deleted faces stay in it as tombstones
and are excluded from every search by a bitmap of live positions, until the
collection is compacted into a fresh structure (``rebuild``).
Similarities are always exact dot products of the stored float32 vectors; only
*which* neighbours an HNSW search visits is approximate.

Not thread-safe by itself: searches may run concurrently with each other, never
with ``add`` (the gallery's readers-writer lock sees to that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from app.core.types import FloatArray

# faiss's bundled type stubs lack the search-parameter classes and a few attributes.
_faiss: Any = faiss

PositionArray = NDArray[np.int64]
Bitmap = NDArray[np.uint8]


class IndexKind(StrEnum):
    EXACT = "exact"  # IndexFlatIP: every live vector compared with every query
    HNSW = "hnsw"  # IndexHNSWFlat: graph search, approximate neighbours, exact scores


@dataclass(frozen=True, slots=True)
class IndexPolicy:
    """When a collection switches to HNSW, with which parameters; when it is compacted.

    The defaults were chosen by measurement on face embeddings (``bench/index_choice.py``;
    figures and reasoning in docs/scale.md).
    """

    # A collection of at least this many live faces is searched with HNSW; below half
    # of it (hysteresis, checked when the collection is compacted) it goes back to exact.
    hnsw_min_faces: int = 20_000
    # Graph degree (links per node; 2x on the bottom layer). Memory: ~8*M bytes per face.
    hnsw_m: int = 32
    # Candidate list while inserting: build time against graph quality.
    hnsw_ef_construction: int = 80
    # Candidate list while searching, up to ``hnsw_ef_reference_faces`` live faces
    # (raised to the number of neighbours asked for). At 100k faces ef=128 kept only
    # 98.3% of exact recall@1, ef=256 99.9%.
    hnsw_ef_search: int = 256
    # Above this many live faces the candidate list grows in proportion to the
    # collection's size (``ef_search_for``). Measured on one 1M-face graph
    # (``bench/ef_sweep.py``, docs/scale.md): ef=256 kept 91.8% of exact recall@1, 816
    # (square-root growth) 98.8%, 1024 99.3%, 1536 99.6%, 2048 99.7%.
    hnsw_ef_reference_faces: int = 100_000
    # ... up to this (reached at 800k faces): search time grows about linearly with ef,
    # 11 ms a query at 2048 on one busy core, and beyond 1M nothing was measured.
    hnsw_ef_search_max: int = 2048
    # Neighbour lists longer than this are computed exactly instead (a query whose
    # top_k subjects hide behind thousands of faces of a few subjects).
    max_ann_neighbours: int = 2048
    # Compact (rebuild without tombstones) once this share of positions is dead.
    max_dead_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.hnsw_min_faces < 2:
            raise ValueError(f"hnsw_min_faces must be at least 2, got {self.hnsw_min_faces}")
        if self.hnsw_m < 4 or self.hnsw_ef_construction < 1 or self.hnsw_ef_search < 1:
            raise ValueError("hnsw_m must be at least 4 and the ef values positive")
        if self.hnsw_ef_reference_faces < 1 or self.hnsw_ef_search_max < self.hnsw_ef_search:
            raise ValueError(
                "hnsw_ef_reference_faces must be positive and hnsw_ef_search_max at least "
                f"hnsw_ef_search ({self.hnsw_ef_search}), got {self.hnsw_ef_search_max}"
            )
        if not 0 < self.max_dead_fraction < 1:
            raise ValueError(f"max_dead_fraction must be in (0, 1), got {self.max_dead_fraction}")

    def ef_search_for(self, live_faces: int) -> int:
        """HNSW candidates per search in a collection of ``live_faces``.

        ``hnsw_ef_search`` up to ``hnsw_ef_reference_faces``, then
        ``hnsw_ef_search * live_faces / hnsw_ef_reference_faces`` rounded up to a
        multiple of 16, capped at ``hnsw_ef_search_max``. Non-decreasing in ``live_faces``.
        """
        if live_faces <= self.hnsw_ef_reference_faces:
            return self.hnsw_ef_search
        grown = self.hnsw_ef_search * live_faces / self.hnsw_ef_reference_faces
        return min(self.hnsw_ef_search_max, _EF_STEP * math.ceil(grown / _EF_STEP))

    def kind_for(self, live_faces: int, current: IndexKind) -> IndexKind:
        """The structure a collection of ``live_faces`` should use, given the current one."""
        if live_faces >= self.hnsw_min_faces:
            return IndexKind.HNSW
        if current is IndexKind.HNSW and live_faces >= self.hnsw_min_faces // 2:
            return IndexKind.HNSW
        return IndexKind.EXACT


DEFAULT_POLICY = IndexPolicy()
# ef values are rounded up to a multiple of this: a collection growing by one face does
# not change its search effort on every write.
_EF_STEP = 16


class FaissVectors:
    """One FAISS index whose ids are positions; inner product on unit vectors."""

    def __init__(self, index: faiss.Index, kind: IndexKind) -> None:
        self._index = index
        self.kind = kind
        # The flat vectors themselves: the index for EXACT, the HNSW graph's storage.
        self._flat = index if kind is IndexKind.EXACT else _faiss_storage(index)

    @classmethod
    def empty(cls, kind: IndexKind, dim: int, policy: IndexPolicy) -> FaissVectors:
        if kind is IndexKind.EXACT:
            return cls(faiss.IndexFlatIP(dim), kind)
        index = faiss.IndexHNSWFlat(dim, policy.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = policy.hnsw_ef_construction
        return cls(index, kind)

    @classmethod
    def adopt(cls, index: faiss.Index, *, dim: int) -> FaissVectors:
        """Wrap an index read from a snapshot, refusing anything but what ``empty`` builds.

        ``index`` must be the object that owns the C++ index (``faiss.read_index``
        returns it already downcast); a ``downcast_index`` proxy would not keep it alive.
        """
        if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(
                f"index has dim {index.d} and metric {index.metric_type}, expected dim {dim} "
                f"and inner product ({faiss.METRIC_INNER_PRODUCT})"
            )
        if type(index) is faiss.IndexFlatIP or type(index) is faiss.IndexFlat:
            return cls(index, IndexKind.EXACT)
        if type(index) is faiss.IndexHNSWFlat:
            storage = _faiss_storage(index)
            if storage.ntotal != index.ntotal or storage.d != dim:
                raise ValueError("HNSW storage does not match its graph")
            return cls(index, IndexKind.HNSW)
        raise ValueError(f"unexpected FAISS index type {type(index).__name__}")

    @property
    def faiss_index(self) -> faiss.Index:
        return self._index

    @property
    def count(self) -> int:
        """Positions held, live or dead."""
        return int(self._index.ntotal)

    def add(self, vectors: FloatArray) -> None:
        """Append ``vectors`` (N, D) float32 at positions ``count`` .. ``count + N - 1``."""
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(
        self, queries: FloatArray, k: int, live: Bitmap | None, *, exact: bool, ef_search: int
    ) -> tuple[FloatArray, PositionArray]:
        """The ``k`` best live positions per query (padded with -1), best first.

        ``live`` is a little-endian bitmap of live positions, or None when all are;
        ``exact`` compares every vector even when the structure is a graph; ``ef_search``
        is the graph search's candidate list (raised to ``k``).
        """
        selector = None if live is None else faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(live))
        if exact or self.kind is IndexKind.EXACT:
            params = _faiss.SearchParameters(sel=selector) if selector is not None else None
            similarities, positions = self._flat.search(queries, k, params=params)
        else:
            params = _faiss.SearchParametersHNSW(efSearch=max(ef_search, k))
            if selector is not None:
                params.sel = selector
            similarities, positions = self._index.search(queries, k, params=params)
        return similarities, positions

    def reconstruct(self, positions: PositionArray) -> FloatArray:
        """The stored vectors at ``positions`` (M, D)."""
        vectors: FloatArray = self._flat.reconstruct_batch(np.ascontiguousarray(positions))
        return vectors


def _faiss_storage(index: faiss.Index) -> faiss.Index:
    """The flat vectors under an HNSW graph."""
    storage: faiss.Index = _faiss.downcast_index(_faiss.downcast_index(index).storage)
    return storage
