"""Gallery behaviour within one open session: enroll, search, delete, list (every backend)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.core.gallery import Gallery
from app.core.types import FloatArray, NewFace
from app.errors import FaceNotFound, InvalidRequest, SubjectNotFound
from app.gallery.values import MAX_TEXT_BYTES
from tests.gallery.conformance.conftest import Backend

UnitVectors = Callable[[int], FloatArray]
NearVector = Callable[[FloatArray], FloatArray]
MakeFace = Callable[..., NewFace]

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # the gallery only checks the signature


def enroll(
    gallery: Gallery, subject: str, faces: list[NewFace], collection: str = "c"
) -> list[str]:
    return [record.face_id for record, _ in gallery.add_faces(collection, subject, faces)]


def top_subjects(
    gallery: Gallery, query: FloatArray, top_k: int = 5, collection: str = "c"
) -> list[str]:
    (hits,) = gallery.search(collection, query[None, :], top_k)
    return [hit.subject for hit in hits]


# --- enroll and search -------------------------------------------------------------------


def test_search_returns_the_enrolled_subject_first(
    gallery: Gallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    people = unit_vectors(10)
    for number, vector in enumerate(people):
        enroll(gallery, f"person-{number}", [make_face(vector)])

    for number, vector in enumerate(people):
        assert top_subjects(gallery, near(vector))[0] == f"person-{number}"


def test_search_returns_best_face_per_subject(
    gallery: Gallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    alice, bob = unit_vectors(2)
    alice_faces = enroll(gallery, "alice", [make_face(near(alice)) for _ in range(5)])
    enroll(gallery, "bob", [make_face(bob)])
    exact = enroll(gallery, "alice", [make_face(alice)])[0]

    (hits,) = gallery.search("c", alice[None, :], top_k=5)

    assert [hit.subject for hit in hits] == ["alice", "bob"]  # alice once, despite 6 faces
    assert hits[0].face_id == exact
    assert exact not in alice_faces
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert hits[0].similarity >= hits[1].similarity


def test_search_returns_at_most_top_k_subjects_best_first(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    people = unit_vectors(8)
    for number, vector in enumerate(people):
        enroll(gallery, f"p{number}", [make_face(vector)])
    query = unit_vectors(1)[0]

    (hits,) = gallery.search("c", query[None, :], top_k=3)

    expected = sorted(range(8), key=lambda n: -float(people[n] @ query))[:3]
    assert [hit.subject for hit in hits] == [f"p{n}" for n in expected]
    assert [hit.similarity for hit in hits] == pytest.approx(
        [float(people[n] @ query) for n in expected]
    )


def test_search_answers_each_query_of_a_batch(
    gallery: Gallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    alice, bob = unit_vectors(2)
    enroll(gallery, "alice", [make_face(alice)])
    enroll(gallery, "bob", [make_face(bob)])

    results = gallery.search("c", np.stack([near(bob), near(alice)]), top_k=1)

    assert [[hit.subject for hit in hits] for hits in results] == [["bob"], ["alice"]]


def test_search_fills_top_k_past_a_subject_with_many_faces(
    gallery: Gallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    query = unit_vectors(1)[0]
    crowd = 48  # more faces than any backend first asks its index for, per subject wanted
    enroll(gallery, "crowd", [make_face(near(query)) for _ in range(crowd)])
    for number, vector in enumerate(unit_vectors(3)):
        enroll(gallery, f"other-{number}", [make_face(vector)])

    subjects = top_subjects(gallery, query, top_k=3)

    assert len(subjects) == 3
    assert subjects[0] == "crowd"


@pytest.mark.parametrize("collection", ["empty", "never-used"])
def test_search_in_a_collection_without_faces_returns_empty_lists(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace, collection: str
) -> None:
    record = gallery.add_faces("empty", "x", [make_face()])[0][0]
    gallery.delete_face("empty", record.face_id)
    assert gallery.search(collection, unit_vectors(3), top_k=5) == [[], [], []]


def test_add_faces_returns_records_in_order_with_created_flags(
    gallery: Gallery, make_face: MakeFace
) -> None:
    faces = [make_face(), make_face()]
    results = gallery.add_faces("c", "alice", faces)
    assert [created for _, created in results] == [True, True]
    for (record, _), face in zip(results, faces, strict=True):
        assert (record.collection, record.subject) == ("c", "alice")
        assert record.image_sha256 == face.image_sha256
        assert record.bbox == face.bbox
        assert record.model_id == gallery.model_id
        assert len(record.face_id) == 32
        assert record.created_at.tzinfo is not None


def test_re_enrolling_the_same_image_returns_the_existing_face(
    gallery: Gallery, make_face: MakeFace
) -> None:
    face = make_face(image="passport.jpg")
    [(first, first_created)] = gallery.add_faces("c", "alice", [face])
    [(again, again_created)] = gallery.add_faces("c", "alice", [make_face(image="passport.jpg")])

    assert (first_created, again_created) == (True, False)
    assert again == first
    assert gallery.total_faces() == 1


def test_same_image_twice_in_one_call_is_stored_once(gallery: Gallery, make_face: MakeFace) -> None:
    results = gallery.add_faces("c", "alice", [make_face(image="a.jpg"), make_face(image="a.jpg")])
    assert [created for _, created in results] == [True, False]
    assert results[0][0] == results[1][0]
    assert gallery.total_faces() == 1


def test_same_image_for_another_subject_or_collection_is_a_new_face(
    gallery: Gallery, make_face: MakeFace
) -> None:
    gallery.add_faces("c", "alice", [make_face(image="group.jpg")])
    [(_, for_bob)] = gallery.add_faces("c", "bob", [make_face(image="group.jpg")])
    [(_, elsewhere)] = gallery.add_faces("other", "alice", [make_face(image="group.jpg")])
    assert for_bob
    assert elsewhere
    assert gallery.total_faces() == 3


def test_a_failing_enroll_stores_none_of_its_faces(
    gallery: Gallery, backend: Backend, make_face: MakeFace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_insert = backend.repository.insert_face
    calls = iter(range(100))

    def insert_then_fail(*args: object, **kwargs: object) -> object:
        if next(calls) == 1:
            raise OSError("disk went away")
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(backend.repository, "insert_face", insert_then_fail)
    with pytest.raises(OSError, match="disk went away"):
        gallery.add_faces("c", "alice", [make_face(), make_face()])

    assert gallery.total_faces() == 0
    assert gallery.list_subjects("c", limit=10, offset=0) == ([], 0)


# --- delete ------------------------------------------------------------------------------


def test_delete_face_removes_it_from_search(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    first, second = unit_vectors(2)
    first_id, second_id = enroll(gallery, "alice", [make_face(first), make_face(second)])

    deleted = gallery.delete_face("c", first_id)

    assert deleted.face_id == first_id
    (hits,) = gallery.search("c", first[None, :], top_k=5)
    assert [hit.face_id for hit in hits] == [second_id]
    summary, faces = gallery.get_subject("c", "alice")
    assert summary.face_count == 1
    assert [face.face_id for face in faces] == [second_id]


def test_deleting_a_subjects_last_face_deletes_the_subject(
    gallery: Gallery, make_face: MakeFace
) -> None:
    [face_id] = enroll(gallery, "alice", [make_face()])
    gallery.delete_face("c", face_id)
    with pytest.raises(SubjectNotFound):
        gallery.get_subject("c", "alice")
    assert gallery.list_subjects("c", limit=10, offset=0) == ([], 0)
    assert gallery.stats() == {}


def test_delete_subject_removes_all_its_faces_from_search(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    alice, bob = unit_vectors(2)
    enroll(gallery, "alice", [make_face(alice), make_face(), make_face()])
    enroll(gallery, "bob", [make_face(bob)])

    assert gallery.delete_subject("c", "alice") == 3

    assert top_subjects(gallery, alice) == ["bob"]
    assert gallery.total_faces() == 1
    with pytest.raises(SubjectNotFound):
        gallery.best_match_for_subject("c", "alice", alice)


def test_a_deleted_subject_can_be_enrolled_again(gallery: Gallery, make_face: MakeFace) -> None:
    enroll(gallery, "alice", [make_face(image="a.jpg")])
    gallery.delete_subject("c", "alice")
    [(_, created)] = gallery.add_faces("c", "alice", [make_face(image="a.jpg")])
    assert created


def test_deleting_unknown_things_raises_not_found(gallery: Gallery, make_face: MakeFace) -> None:
    [face_id] = enroll(gallery, "alice", [make_face()])
    with pytest.raises(SubjectNotFound):
        gallery.delete_subject("c", "bob")
    with pytest.raises(SubjectNotFound):
        gallery.delete_subject("other", "alice")
    with pytest.raises(FaceNotFound):
        gallery.delete_face("c", "0" * 32)
    with pytest.raises(FaceNotFound):
        gallery.delete_face("other", face_id)  # exists, but in another collection
    assert gallery.total_faces() == 1


# --- collections ---------------------------------------------------------------------------


def test_collections_are_isolated(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    office, lab = unit_vectors(2)
    enroll(gallery, "alice", [make_face(office)], collection="office")
    enroll(gallery, "alice", [make_face(lab), make_face()], collection="lab")
    enroll(gallery, "bob", [make_face()], collection="lab")

    assert top_subjects(gallery, lab, collection="office") == ["alice"]
    office_hit = gallery.best_match_for_subject("office", "alice", lab)
    assert office_hit.similarity == pytest.approx(float(office @ lab), abs=1e-5)
    assert gallery.get_subject("office", "alice")[0].face_count == 1
    assert gallery.list_subjects("office", limit=10, offset=0)[1] == 1
    assert gallery.stats() == {"lab": 3, "office": 1}

    gallery.delete_subject("lab", "alice")
    assert gallery.get_subject("office", "alice")[0].face_count == 1
    with pytest.raises(SubjectNotFound):
        gallery.best_match_for_subject("office", "bob", lab)


# --- reads ---------------------------------------------------------------------------------


def test_best_match_for_subject_is_its_closest_face(
    gallery: Gallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    alice, bob = unit_vectors(2)
    far_id, close_id = enroll(gallery, "alice", [make_face(), make_face(near(alice))])
    enroll(gallery, "bob", [make_face(bob)])

    hit = gallery.best_match_for_subject("c", "alice", alice)

    assert (hit.subject, hit.face_id) == ("alice", close_id)
    assert hit.similarity > 0.9
    assert far_id != close_id


def test_list_subjects_pages_by_name_with_the_total(gallery: Gallery, make_face: MakeFace) -> None:
    for name in ["dave", "alice", "carol", "bob", "erin"]:
        enroll(gallery, name, [make_face() for _ in range(len(name) - 2)])

    first_page, total = gallery.list_subjects("c", limit=2, offset=0)
    second_page, _ = gallery.list_subjects("c", limit=2, offset=2)
    past_the_end, total_again = gallery.list_subjects("c", limit=2, offset=10)

    assert total == total_again == 5
    assert [s.subject for s in first_page + second_page] == ["alice", "bob", "carol", "dave"]
    assert [s.face_count for s in first_page] == [3, 1]
    assert past_the_end == []


def test_get_subject_returns_its_summary_and_faces(gallery: Gallery, make_face: MakeFace) -> None:
    [(first, _)] = gallery.add_faces("c", "alice", [make_face()])
    [(second, _)] = gallery.add_faces("c", "alice", [make_face()])

    summary, faces = gallery.get_subject("c", "alice")

    assert (summary.collection, summary.subject, summary.face_count) == ("c", "alice", 2)
    assert summary.created_at == first.created_at
    assert summary.updated_at == second.created_at
    assert faces == [first, second]


def test_aligned_crops_yields_faces_that_kept_one(gallery: Gallery, make_face: MakeFace) -> None:
    [(kept, _)] = gallery.add_faces("c", "alice", [make_face(aligned_png=PNG_BYTES)])
    gallery.add_faces("c", "bob", [make_face()])
    [(other, _)] = gallery.add_faces("d", "carol", [make_face(aligned_png=PNG_BYTES)])

    assert list(gallery.aligned_crops("c")) == [(kept, PNG_BYTES)]
    assert [record for record, _ in gallery.aligned_crops()] == [kept, other]


# --- names and inputs ------------------------------------------------------------------------

UNUSUAL_NAMES = [
    "",
    " ",
    "Zoë Ångström",
    "李小龙",
    "مريم",  # right-to-left
    "\u202eevil",  # right-to-left override
    "e\u0301",  # combining accent (not NFC-normalised: the caller's business)
    "👩‍👩‍👧",  # emoji ZWJ sequence
    "'; DROP TABLE faces; --",
    "%_*",
    "x" * (MAX_TEXT_BYTES - len("-other")),  # the test adds "-other" to it
    "é" * ((MAX_TEXT_BYTES - len("-other")) // 2),  # two bytes each
]


@pytest.mark.parametrize("name", UNUSUAL_NAMES)
def test_any_unicode_name_works_as_subject_and_collection(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace, name: str
) -> None:
    vector = unit_vectors(1)[0]
    [(record, _)] = gallery.add_faces(name, name, [make_face(vector)])
    enroll(gallery, name + "-other", [make_face()], collection=name)

    assert record.subject == name
    assert record.collection == name
    assert top_subjects(gallery, vector, collection=name)[0] == name
    assert gallery.get_subject(name, name)[0].subject == name
    assert name in [s.subject for s in gallery.list_subjects(name, limit=10, offset=0)[0]]
    assert gallery.delete_subject(name, name) == 1
    assert gallery.stats() == {name: 1}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad\ud800name", "lone surrogate"),
        ("a\x00b", "NUL"),
        ("x" * (MAX_TEXT_BYTES + 1), "bytes of UTF-8"),
        ("é" * (MAX_TEXT_BYTES // 2 + 1), "bytes of UTF-8"),
    ],
)
def test_a_name_no_database_can_store_is_an_invalid_request(
    gallery: Gallery, make_face: MakeFace, name: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        gallery.add_faces("c", name, [make_face()])
    with pytest.raises(InvalidRequest):
        gallery.get_subject(name, "alice")
    assert gallery.total_faces() == 0


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        (np.ones(31, dtype=np.float32) / np.sqrt(31), "shape"),
        (np.ones(32, dtype=np.float32), "L2-normalised"),
        (np.full(32, np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_add_faces_rejects_embeddings_the_gallery_cannot_compare(
    gallery: Gallery, make_face: MakeFace, embedding: FloatArray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gallery.add_faces("c", "alice", [make_face(), make_face(embedding)])
    assert gallery.total_faces() == 0


def test_search_rejects_a_non_positive_top_k(gallery: Gallery, unit_vectors: UnitVectors) -> None:
    with pytest.raises(InvalidRequest, match="top_k"):
        gallery.search("c", unit_vectors(1), top_k=0)


def test_add_faces_rejects_a_crop_that_is_not_png(gallery: Gallery, make_face: MakeFace) -> None:
    with pytest.raises(ValueError, match="PNG"):
        gallery.add_faces("c", "alice", [make_face(aligned_png=b"\xff\xd8\xff jpeg")])


def test_add_faces_with_no_faces_changes_nothing(gallery: Gallery) -> None:
    assert gallery.add_faces("c", "alice", []) == []
    assert gallery.list_subjects("c", limit=10, offset=0) == ([], 0)
