"""Searching one collection: ``top_k`` distinct subjects, each by its most similar face.

Two plans, one answer:

* **exact**: every face of the collection (its btree range), the best per subject in
  SQL (``DISTINCT ON``), ranked. Used for collections of up to ``EXACT_MAX_FACES``
  faces, where it is as fast as the index and has nothing to miss, and as the
  fallback that makes the guarantee below hold.
* **approximate**: the HNSW index (``schema.index_expression``) filtered to the
  collection, with pgvector's iterative scan (``hnsw.iterative_scan``) so a filter
  that rejects most index neighbours still yields rows. Candidates are re-ranked by
  their exact float32 similarity and collapsed to the best face per subject; too
  few distinct subjects widens the candidate list, and if the index still cannot
  give ``min(top_k, subjects in the collection)`` subjects, the exact plan answers.

So a search never returns fewer than ``top_k`` subjects while the collection holds
that many, however small the collection is within the table, and however many
faces one subject has.
"""

from __future__ import annotations

from typing import Any

import psycopg

from app.core.types import FloatArray, SearchHit
from app.gallery.postgres import repository
from app.gallery.postgres.schema import index_expression

# Up to this many faces a collection is searched exactly: measured in
# bench/pgvector_types.py/docs/gallery.md, an exact scan of this many faces costs
# about what an index search does, and never misses.
EXACT_MAX_FACES = 2_000
# Candidates asked of the index per wanted subject at first, and the growth factor
# while that yields too few distinct subjects (many faces per subject).
INITIAL_FACES_PER_SUBJECT = 4
GROWTH = 4
MAX_CANDIDATES = 2_000
# Index tuples one iterative scan may visit (pgvector hnsw.max_scan_tuples).
MAX_SCAN_TUPLES = 40_000


def search_collection(
    connection: psycopg.Connection[Any],
    collection_id: int,
    queries: FloatArray,
    top_k: int,
    *,
    dim: int,
    face_count: int,
    ef_search: int,
    table: str = "faces",
) -> list[list[SearchHit]]:
    """Each query's hits; ``face_count`` (possibly stale) only picks the plan.
    ``table``: the generation's embeddings (``generation_tables.vectors_table``)."""
    if face_count <= EXACT_MAX_FACES:
        return [
            exact_search(connection, collection_id, query, top_k, table=table) for query in queries
        ]
    connection.execute(
        "SELECT set_config('hnsw.ef_search', %s, true), "
        "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        "set_config('hnsw.max_scan_tuples', %s, true)",
        (str(ef_search), str(MAX_SCAN_TUPLES)),
    )
    return [
        approximate_search(connection, collection_id, query, top_k, dim=dim, table=table)
        for query in queries
    ]


def exact_search(
    connection: psycopg.Connection[Any],
    collection_id: int,
    query: FloatArray,
    top_k: int,
    *,
    table: str = "faces",
) -> list[SearchHit]:
    rows = connection.execute(
        "SELECT s.name, best.face_id, best.similarity FROM ("
        "  SELECT DISTINCT ON (f.subject_id) f.subject_id, f.face_id, f.id,"
        "         -(f.embedding <#> %(q)b) AS similarity"
        f"  FROM {table} f WHERE f.collection_id = %(c)s AND f.embedding IS NOT NULL"
        "  ORDER BY f.subject_id, f.embedding <#> %(q)b, f.id"
        ") best JOIN subjects s ON s.id = best.subject_id "
        "ORDER BY best.similarity DESC, best.id LIMIT %(k)s",
        {"q": query, "c": collection_id, "k": top_k},
    ).fetchall()
    return [
        SearchHit(subject=name, similarity=_clip(similarity), face_id=face_id)
        for name, face_id, similarity in rows
    ]


def approximate_search(
    connection: psycopg.Connection[Any],
    collection_id: int,
    query: FloatArray,
    top_k: int,
    *,
    dim: int,
    table: str = "faces",
) -> list[SearchHit]:
    candidates = top_k * INITIAL_FACES_PER_SUBJECT
    while True:
        rows = _index_candidates(connection, collection_id, query, candidates, dim=dim, table=table)
        hits = best_per_subject(rows, top_k)
        if len(hits) >= top_k:
            return hits
        if len(rows) < candidates or candidates >= MAX_CANDIDATES:
            break  # the index gave what it could
        candidates = min(candidates * GROWTH, MAX_CANDIDATES)
    if len(hits) >= min(top_k, repository.subject_count(connection, collection_id)):
        return hits
    return exact_search(connection, collection_id, query, top_k, table=table)


def best_per_subject(rows: list[tuple[str, str, float]], top_k: int) -> list[SearchHit]:
    """``(subject, face_id, similarity)`` candidates -> each subject's best, best first."""
    best: dict[str, tuple[float, str]] = {}
    for subject, face_id, similarity in rows:
        known = best.get(subject)
        if known is None or (-similarity, face_id) < (-known[0], known[1]):
            best[subject] = (similarity, face_id)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))
    return [
        SearchHit(subject=subject, similarity=_clip(similarity), face_id=face_id)
        for subject, (similarity, face_id) in ranked[:top_k]
    ]


def index_candidates_sql(dim: int, table: str = "faces") -> str:
    """The approximate plan's statement: its ORDER BY is the index's expression."""
    return (
        "SELECT s.name, near.face_id, near.similarity FROM ("
        "  SELECT f.subject_id, f.face_id, -(f.embedding <#> %(q)b) AS similarity"
        f"  FROM {table} f WHERE f.collection_id = %(c)s AND f.embedding IS NOT NULL"
        f"  ORDER BY {index_expression(dim)} <#> (%(q)b::halfvec({int(dim)}))"
        "  LIMIT %(n)s"
        ") near JOIN subjects s ON s.id = near.subject_id"
    )


def _index_candidates(
    connection: psycopg.Connection[Any],
    collection_id: int,
    query: FloatArray,
    limit: int,
    *,
    dim: int,
    table: str,
) -> list[tuple[str, str, float]]:
    """The index's nearest faces of the collection, with exact float32 similarities."""
    rows = connection.execute(
        index_candidates_sql(dim, table), {"q": query, "c": collection_id, "n": limit}
    ).fetchall()
    return [(name, face_id, float(similarity)) for name, face_id, similarity in rows]


def _clip(similarity: float) -> float:
    # Unit vectors: float32 rounding can push a self-match just past 1.0.
    return min(1.0, max(-1.0, float(similarity)))
