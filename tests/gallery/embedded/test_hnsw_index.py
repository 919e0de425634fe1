"""One collection's index across its structures: exact, HNSW, tombstones, compaction."""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import pytest

from app.core.types import FloatArray
from app.gallery.embedded.index import CollectionIndex, IndexState
from app.gallery.embedded.rebuild import Rebuild, rebuilt
from app.gallery.embedded.vectors import IndexKind, IndexPolicy
from tests.gallery.conftest import DIM, NearVector, UnitVectors

# Small enough that a test crosses it in milliseconds.
SMALL = IndexPolicy(hnsw_min_faces=200, hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=32)


def fill(
    index: CollectionIndex, vectors: FloatArray, *, first_id: int = 1, per_subject: int = 4
) -> list[str]:
    """Add ``vectors`` as faces ``first_id..``, ``per_subject`` per subject; their subjects."""
    ids = list(range(first_id, first_id + len(vectors)))
    subjects = [f"s{face_id // per_subject}" for face_id in ids]
    index.add(ids, vectors, subjects, [f"f{face_id}" for face_id in ids])
    return subjects


def brute_force(
    vectors: FloatArray, subjects: Sequence[str], query: FloatArray, top_k: int
) -> list[str]:
    """The exact answer: subjects ranked by their best face's similarity."""
    best: dict[str, float] = {}
    for similarity, subject in zip((vectors @ query).tolist(), subjects, strict=True):
        best[subject] = max(similarity, best.get(subject, -2.0))
    return sorted(best, key=lambda subject: -best[subject])[:top_k]


def test_a_collection_becomes_hnsw_at_the_threshold(unit_vectors: UnitVectors) -> None:
    index = CollectionIndex(DIM, SMALL)
    fill(index, unit_vectors(SMALL.hnsw_min_faces - 1))
    assert not index.wants_restructure()
    fill(index, unit_vectors(1), first_id=SMALL.hnsw_min_faces)

    assert index.wants_restructure()
    converted = rebuilt(index)
    assert (index.kind, converted.kind) == (IndexKind.EXACT, IndexKind.HNSW)
    assert converted.face_count == SMALL.hnsw_min_faces


def test_hnsw_finds_each_faces_near_duplicate(unit_vectors: UnitVectors, near: NearVector) -> None:
    vectors = unit_vectors(2000)
    index = CollectionIndex(DIM, SMALL, IndexKind.HNSW)
    subjects = fill(index, vectors)
    probes = np.stack([near(vector) for vector in vectors[::10]])

    results = index.search(probes, top_k=3)

    assert [hits[0].subject for hits in results] == subjects[::10]
    assert [hits[0].face_id for hits in results] == [f"f{i}" for i in range(1, 2001, 10)]


def test_hnsw_similarities_are_exact_dot_products(unit_vectors: UnitVectors) -> None:
    vectors = unit_vectors(1000)
    index = CollectionIndex(DIM, SMALL, IndexKind.HNSW)
    fill(index, vectors, per_subject=1)
    query = unit_vectors(1)[0]

    (hits,) = index.search(query[None, :], top_k=5)

    for hit in hits:
        face = int(hit.face_id[1:]) - 1
        assert hit.similarity == pytest.approx(float(vectors[face] @ query), abs=1e-6)


def test_hnsw_fills_top_k_past_a_crowd_of_one_subject(
    unit_vectors: UnitVectors, near: NearVector
) -> None:
    """Thousands of one subject's faces hide the others: the search widens, then goes exact."""
    query = unit_vectors(1)[0]
    crowd = np.stack([near(query) for _ in range(3000)])
    others = unit_vectors(500)
    policy = IndexPolicy(hnsw_min_faces=200, hnsw_m=16, max_ann_neighbours=256)
    index = CollectionIndex(DIM, policy, IndexKind.HNSW)
    index.add(list(range(1, 3001)), crowd, ["crowd"] * 3000, [f"c{i}" for i in range(3000)])
    other_subjects = fill(index, others, first_id=3001, per_subject=1)

    (hits,) = index.search(query[None, :], top_k=5)

    expected = ["crowd", *brute_force(others, other_subjects, query, 4)]
    assert [hit.subject for hit in hits] == expected


@pytest.mark.parametrize("kind", list(IndexKind))
def test_removed_faces_are_never_returned(
    kind: IndexKind, unit_vectors: UnitVectors, near: NearVector
) -> None:
    vectors = unit_vectors(1200)
    index = CollectionIndex(DIM, SMALL, kind)
    fill(index, vectors, per_subject=1)
    removed = list(range(1, 1201, 3))
    index.remove(removed)
    gone = {f"f{face_id}" for face_id in removed}

    results = index.search(np.stack([near(vector) for vector in vectors]), top_k=10)

    assert index.face_count == 1200 - len(removed)
    returned = {hit.face_id for hits in results for hit in hits}
    assert returned
    assert not returned & gone
    # A face that is still there is still its own near-duplicate's best match.
    assert all(hits[0].face_id == f"f{row + 1}" for row, hits in enumerate(results) if row % 3)


def test_removing_unknown_or_already_removed_ids_changes_nothing(
    unit_vectors: UnitVectors,
) -> None:
    index = CollectionIndex(DIM, SMALL)
    fill(index, unit_vectors(8))
    index.remove([3])
    index.remove([3, 999, -5])
    assert (index.face_count, index.subject_count) == (7, 3)


def test_best_match_ignores_removed_faces(unit_vectors: UnitVectors) -> None:
    index = CollectionIndex(DIM, SMALL, IndexKind.HNSW)
    vectors = unit_vectors(4)
    fill(index, vectors, per_subject=10)  # one subject, s0
    index.remove([2])

    hit = index.best_match("s0", vectors[1])

    assert hit is not None
    assert hit.face_id != "f2"
    assert hit.similarity == pytest.approx(float(np.max(vectors[[0, 2, 3]] @ vectors[1])))


def test_a_subject_whose_faces_are_all_removed_is_gone(unit_vectors: UnitVectors) -> None:
    index = CollectionIndex(DIM, SMALL)
    vectors = unit_vectors(8)
    fill(index, vectors)  # s0: ids 1-3, s1: 4-7, s2: 8
    index.remove([1, 2, 3])
    assert index.best_match("s0", vectors[0]) is None
    (hits,) = index.search(vectors[:1], top_k=10)
    assert sorted(hit.subject for hit in hits) == ["s1", "s2"]


def test_tombstones_are_compacted_away(unit_vectors: UnitVectors, near: NearVector) -> None:
    vectors = unit_vectors(400)
    index = CollectionIndex(DIM, SMALL, IndexKind.HNSW)
    fill(index, vectors)
    index.remove(list(range(1, 80)))
    assert not index.wants_restructure()  # 79 of 400 dead: below a quarter
    index.remove(list(range(80, 101)))
    assert index.wants_restructure()

    compacted = rebuilt(index)

    assert (compacted.position_count, compacted.face_count) == (300, 300)
    assert compacted.kind is IndexKind.HNSW  # 300 >= half the threshold
    probes = np.stack([near(vector) for vector in vectors[100:]])
    results = compacted.search(probes, top_k=3)
    assert [hits[0].face_id for hits in results] == [f"f{i}" for i in range(101, 401)]


def test_a_shrunken_collection_goes_back_to_exact_below_half_the_threshold(
    unit_vectors: UnitVectors,
) -> None:
    index = CollectionIndex(DIM, SMALL, IndexKind.HNSW)
    fill(index, unit_vectors(300))
    index.remove(list(range(1, 150)))  # 151 live >= 100: still HNSW
    index = rebuilt(index)
    assert index.kind is IndexKind.HNSW
    index.remove(list(range(150, 210)))  # 91 live < 100
    assert index.wants_restructure()
    assert rebuilt(index).kind is IndexKind.EXACT


@pytest.mark.parametrize(
    ("ids", "message"),
    [([5, 4], "ascending"), ([3, 3], "ascending"), ([2], "above 3")],
)
def test_add_refuses_ids_out_of_order(
    ids: list[int], message: str, unit_vectors: UnitVectors
) -> None:
    index = CollectionIndex(DIM, SMALL)
    fill(index, unit_vectors(3))  # ids 1-3
    with pytest.raises(ValueError, match=message):
        index.add(ids, unit_vectors(len(ids)), ["x"] * len(ids), ["y"] * len(ids))
    assert index.face_count == 3


@pytest.mark.parametrize("kind", list(IndexKind))
def test_state_round_trip_keeps_search_results(
    kind: IndexKind, unit_vectors: UnitVectors, near: NearVector
) -> None:
    vectors = unit_vectors(500)
    index = CollectionIndex(DIM, SMALL, kind)
    fill(index, vectors)
    index.remove([7, 8, 9, 10, 300])
    probes = np.stack([near(vector) for vector in vectors[::7]])

    copy = CollectionIndex.from_state(index.state(), dim=DIM, policy=SMALL)

    assert (copy.kind, copy.face_count, copy.subject_count, copy.position_count) == (
        index.kind,
        index.face_count,
        index.subject_count,
        index.position_count,
    )
    assert copy.search(probes, top_k=4) == index.search(probes, top_k=4)


def _state(unit_vectors: UnitVectors, **changes: object) -> IndexState:
    index = CollectionIndex(DIM, SMALL)
    fill(index, unit_vectors(6))
    state = index.state()
    values = {
        "faiss_index": state.faiss_index,
        "row_ids": state.row_ids.copy(),
        "live": state.live.copy(),
        "subject_codes": state.subject_codes.copy(),
        "face_ids": state.face_ids.copy(),
        "subject_names": list(state.subject_names),
    }
    values.update(changes)
    return IndexState(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"row_ids": np.array([1, 2, 3, 4, 5], dtype=np.int64)}, "row_ids has shape"),
        ({"row_ids": np.array([1, 2, 4, 3, 5, 6], dtype=np.int64)}, "ascending"),
        ({"subject_codes": np.array([0, 0, 0, 1, 1, 9], dtype=np.int32)}, "outside"),
        ({"subject_names": ["s0", "s0"]}, "distinct"),
        ({"faiss_index": faiss.IndexFlatL2(DIM)}, "metric"),
        ({"faiss_index": faiss.IndexFlatIP(DIM + 1)}, "dim"),
    ],
)
def test_from_state_refuses_arrays_that_do_not_fit(
    changes: dict[str, object], message: str, unit_vectors: UnitVectors
) -> None:
    with pytest.raises(ValueError, match=message):
        CollectionIndex.from_state(_state(unit_vectors, **changes), dim=DIM, policy=SMALL)


def test_a_rebuild_catches_up_with_changes_made_while_it_ran(
    unit_vectors: UnitVectors, near: NearVector
) -> None:
    """Faces added after the rebuild started are in the result, faces deleted are not."""
    vectors = unit_vectors(700)
    source = CollectionIndex(DIM, SMALL)
    fill(source, vectors[:500])
    rebuild = Rebuild(source)
    rebuild.absorb(rebuild.take(200))  # the first 200 copied ...
    source.remove([5, 6, 7, 300])  # ... then a copied face and an uncopied one die
    fill(source, vectors[500:], first_id=501)  # and new faces arrive
    rebuild.absorb(rebuild.take(200))

    fresh = rebuild.finish()

    assert fresh.kind is IndexKind.HNSW
    assert fresh.face_count == source.face_count == 696
    probes = np.stack([near(vector) for vector in vectors])
    top = [hits[0].face_id for hits in fresh.search(probes, top_k=1)]
    gone = {"f5", "f6", "f7", "f300"}
    assert not gone & set(top)
    kept = [row for row in range(700) if f"f{row + 1}" not in gone]
    assert [top[row] for row in kept] == [f"f{row + 1}" for row in kept]
