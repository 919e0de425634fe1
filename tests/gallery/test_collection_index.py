"""The in-memory index of one collection and the best-face-per-subject ranking."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.core.types import FloatArray, SearchHit
from app.gallery.embedded.index import (
    INITIAL_FACES_PER_SUBJECT,
    CollectionIndex,
    best_hit_per_subject,
)

FACES = {1: ("alice", "a1"), 2: ("bob", "b1"), 3: ("alice", "a2"), 4: ("carol", "c1")}


def ranked(similarities: list[float], ids: list[int], top_k: int) -> list[SearchHit]:
    return best_hit_per_subject(
        np.array(similarities, dtype=np.float32),
        np.array(ids, dtype=np.int64),
        FACES.__getitem__,
        top_k,
    )


def test_best_hit_per_subject_keeps_each_subjects_first_face() -> None:
    hits = ranked([0.9, 0.8, 0.7, 0.5], [3, 1, 2, 4], top_k=10)
    assert [(h.subject, h.face_id) for h in hits] == [
        ("alice", "a2"),
        ("bob", "b1"),
        ("carol", "c1"),
    ]
    assert [h.similarity for h in hits] == pytest.approx([0.9, 0.7, 0.5])


def test_best_hit_per_subject_stops_at_top_k() -> None:
    assert [h.subject for h in ranked([0.9, 0.8, 0.7], [1, 2, 4], top_k=2)] == ["alice", "bob"]


def test_best_hit_per_subject_skips_faiss_padding() -> None:
    hits = ranked([0.9, -3.4e38, -3.4e38], [2, -1, -1], top_k=5)
    assert [h.subject for h in hits] == ["bob"]


def test_best_hit_per_subject_clips_rounding_past_one() -> None:
    assert ranked([1.0000002], [1], top_k=1)[0].similarity == 1.0


def test_search_finds_top_k_subjects_behind_many_faces_of_one(
    unit_vectors: Callable[[int], FloatArray], near: Callable[[FloatArray], FloatArray]
) -> None:
    """One subject's many faces fill the first neighbours; the search must look further."""
    index = CollectionIndex(32)
    query = unit_vectors(1)[0]
    crowd = 3 * INITIAL_FACES_PER_SUBJECT * 5  # more than the first neighbour window
    crowd_vectors = np.stack([near(query) for _ in range(crowd)])
    others = unit_vectors(4)
    index.add(list(range(crowd)), crowd_vectors, ["crowd"] * crowd, [f"c{i}" for i in range(crowd)])
    index.add([100, 101, 102, 103], others, ["w", "x", "y", "z"], ["w1", "x1", "y1", "z1"])

    (hits,) = index.search(query[None, :], top_k=3)

    assert len(hits) == 3
    assert hits[0].subject == "crowd"
    expected_others = sorted(zip(others @ query, "wxyz", strict=True), reverse=True)[:2]
    assert [h.subject for h in hits[1:]] == [name for _, name in expected_others]


def test_search_returns_every_subject_when_fewer_than_top_k(
    unit_vectors: Callable[[int], FloatArray],
) -> None:
    index = CollectionIndex(32)
    index.add([1, 2, 3], unit_vectors(3), ["a", "a", "b"], ["a1", "a2", "b1"])
    (hits,) = index.search(unit_vectors(1), top_k=10)
    assert sorted(h.subject for h in hits) == ["a", "b"]


def test_remove_forgets_faces_and_empty_subjects(
    unit_vectors: Callable[[int], FloatArray],
) -> None:
    index = CollectionIndex(32)
    vectors = unit_vectors(3)
    index.add([1, 2, 3], vectors, ["a", "a", "b"], ["a1", "a2", "b1"])
    index.remove([3, 999])  # unknown ids are ignored
    assert index.face_count == 2
    assert index.best_match("b", vectors[2]) is None
    (hits,) = index.search(vectors[2:3], top_k=5)
    assert [h.subject for h in hits] == ["a"]


def test_best_match_is_the_subjects_closest_face(
    unit_vectors: Callable[[int], FloatArray],
) -> None:
    index = CollectionIndex(32)
    vectors = unit_vectors(3)
    index.add([1, 2, 3], vectors, ["a", "a", "b"], ["a1", "a2", "b1"])
    hit = index.best_match("a", vectors[1])
    assert hit is not None
    assert (hit.subject, hit.face_id) == ("a", "a2")
    assert hit.similarity == pytest.approx(1.0, abs=1e-5)
