"""The PostgreSQL search plans: the HNSW index with collection filters, and the exact plan.

The conformance suite checks results on small collections (the exact plan). Here
``EXACT_MAX_FACES`` is lowered so the index plan answers, and the tests check that it
keeps the contract: ``top_k`` distinct subjects while the collection has them, a small
collection inside a large table included, with exact similarities.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import psycopg
import pytest

from app.core.types import FloatArray, NewFace
from app.gallery.postgres import PostgresGallery, search
from app.gallery.postgres.schema import INDEX_NAME
from app.storage.postgres.vectors import fetch_vector_type, register_vectors
from tests.gallery.conftest import DIM
from tests.postgres.conftest import OpenReplica

UnitVectors = Callable[[int], FloatArray]
NearVector = Callable[[FloatArray], FloatArray]
LARGE = 3000  # faces in the large collection


def new_face(label: str, embedding: FloatArray) -> NewFace:
    digest = hashlib.sha256(label.encode()).hexdigest()
    return NewFace(digest, (0.0, 0.0, 50.0, 50.0), 0.9, embedding)


def fill(gallery: PostgresGallery, collection: str, vectors: FloatArray, per_subject: int) -> None:
    pairs = [
        (f"{collection}-{number // per_subject}", new_face(f"{collection}-{number}", vector))
        for number, vector in enumerate(vectors)
    ]
    for start in range(0, len(pairs), 1000):
        gallery.add_faces_bulk(collection, pairs[start : start + 1000])


def exact_top(vectors: FloatArray, per_subject: int, query: FloatArray, top_k: int) -> list[str]:
    similarities = vectors @ query
    best: dict[int, float] = {}
    for number, similarity in enumerate(similarities.tolist()):
        subject = number // per_subject
        best[subject] = max(best.get(subject, -2.0), similarity)
    ranked = sorted(best, key=lambda subject: -best[subject])[:top_k]
    return [str(subject) for subject in ranked]


@pytest.fixture
def index_plan(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every collection takes the index plan; returns the list of exact fallbacks run."""
    monkeypatch.setattr(search, "EXACT_MAX_FACES", 0)
    fallbacks: list[int] = []
    real_exact = search.exact_search

    def counted(*args: object, **kwargs: object) -> object:
        fallbacks.append(1)
        return real_exact(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(search, "exact_search", counted)
    return fallbacks


def test_a_large_collection_is_searched_through_the_hnsw_index(
    open_replica: OpenReplica, postgres_url: str, unit_vectors: UnitVectors
) -> None:
    gallery = open_replica()
    fill(gallery, "large", unit_vectors(LARGE), per_subject=1)
    with psycopg.connect(postgres_url) as connection:
        register_vectors(connection, fetch_vector_type(connection))
        connection.execute("ANALYZE faces")
        (collection_id,) = connection.execute(
            "SELECT id FROM collections WHERE name = 'large'"
        ).fetchone() or (0,)
        plan = connection.execute(
            "EXPLAIN " + search.index_candidates_sql(DIM),
            {"q": unit_vectors(1)[0], "c": collection_id, "n": 20},
        ).fetchall()
    assert INDEX_NAME in "\n".join(row[0] for row in plan)


def test_the_index_plan_finds_the_exact_top_subjects_with_exact_similarities(
    open_replica: OpenReplica,
    unit_vectors: UnitVectors,
    near: NearVector,
    index_plan: list[int],
) -> None:
    gallery = open_replica()
    vectors = unit_vectors(LARGE)
    fill(gallery, "large", vectors, per_subject=3)
    # Queries near enrolled faces: clear winners an approximate index must not miss.
    queries = np.stack([near(vectors[number]) for number in range(0, LARGE, 97)])

    results = gallery.search("large", queries, top_k=1)

    for query, hits in zip(queries, results, strict=True):
        (hit,) = hits
        assert hit.subject == f"large-{exact_top(vectors, 3, query, 1)[0]}"
        expected = max(
            float(vectors[n] @ query)
            for n in range(LARGE)
            if n // 3 == int(hit.subject.split("-")[1])
        )
        assert hit.similarity == pytest.approx(expected, abs=1e-5)
    assert index_plan == []  # the index answered every query


def test_a_small_collection_in_a_large_table_gets_top_k_subjects(
    open_replica: OpenReplica, unit_vectors: UnitVectors, index_plan: list[int]
) -> None:
    gallery = open_replica()
    fill(gallery, "large", unit_vectors(LARGE), per_subject=1)
    small = unit_vectors(12)
    fill(gallery, "small", small, per_subject=2)  # 6 subjects among 3012 faces
    queries = unit_vectors(5)

    results = gallery.search("small", queries, top_k=5)

    for query, hits in zip(queries, results, strict=True):
        assert [hit.subject for hit in hits] == [
            f"small-{subject}" for subject in exact_top(small, 2, query, 5)
        ]
    asked_for_more = gallery.search("small", queries[:1], top_k=50)
    assert len(asked_for_more[0]) == 6  # every subject, none from another collection


def test_one_subject_with_many_faces_does_not_crowd_out_the_others(
    open_replica: OpenReplica, unit_vectors: UnitVectors, near: NearVector, index_plan: list[int]
) -> None:
    gallery = open_replica()
    fill(gallery, "large", unit_vectors(LARGE), per_subject=1)
    query = unit_vectors(1)[0]
    crowd = np.stack([near(query) for _ in range(400)])
    fill(gallery, "crowded", crowd, per_subject=400)  # subject crowded-0, closest to query
    others = unit_vectors(4)
    gallery.add_faces_bulk(
        "crowded",
        [(f"other-{n}", new_face(f"other-{n}", vector)) for n, vector in enumerate(others)],
    )

    (hits,) = gallery.search("crowded", query[None, :], top_k=3)

    assert len(hits) == 3
    assert hits[0].subject == "crowded-0"
    similarities = {f"other-{n}": float(v @ query) for n, v in enumerate(others)}
    assert [hit.subject for hit in hits[1:]] == sorted(
        similarities, key=lambda s: -similarities[s]
    )[:2]


def test_index_plan_and_exact_plan_agree_on_separated_faces(
    open_replica: OpenReplica,
    unit_vectors: UnitVectors,
    near: NearVector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gallery = open_replica()
    vectors = unit_vectors(LARGE)
    fill(gallery, "large", vectors, per_subject=2)
    queries = np.stack([near(vectors[number]) for number in range(0, LARGE, 151)])

    exact = gallery.search("large", queries, top_k=1)
    monkeypatch.setattr(search, "EXACT_MAX_FACES", 0)
    approximate = gallery.search("large", queries, top_k=1)

    assert [[hit.subject for hit in hits] for hits in approximate] == [
        [hit.subject for hit in hits] for hits in exact
    ]
