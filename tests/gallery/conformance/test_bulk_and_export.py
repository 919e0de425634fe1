"""Bulk imports, exports and the collection version (every backend)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.core.gallery import BulkResult, Gallery
from app.core.types import FloatArray, NewFace

UnitVectors = Callable[[int], FloatArray]
MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., Gallery]


def exported(gallery: Gallery, collection: str, batch_size: int) -> list[tuple[str, str]]:
    return [
        (subject, face_id)
        for batch in gallery.export_embeddings(collection, batch_size=batch_size)
        for subject, face_id in zip(batch.subjects, batch.face_ids, strict=True)
    ]


# --- add_faces_bulk ------------------------------------------------------------------------


def test_bulk_import_adds_every_face_and_is_searchable(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    vectors = unit_vectors(30)
    pairs = [(f"p{number % 10}", make_face(vector)) for number, vector in enumerate(vectors)]

    assert gallery.add_faces_bulk("c", pairs) == BulkResult(added=30, existing=0)

    assert gallery.stats() == {"c": 30}
    assert gallery.list_subjects("c", limit=100, offset=0)[1] == 10
    for number, vector in enumerate(vectors):
        (hits,) = gallery.search("c", vector[None, :], top_k=1)
        assert hits[0].subject == f"p{number % 10}"
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_bulk_import_is_idempotent(gallery: Gallery, make_face: MakeFace) -> None:
    pairs = [(f"p{number}", make_face(image=f"photo-{number}.jpg")) for number in range(8)]
    first = gallery.add_faces_bulk("c", pairs)
    faces_before = exported(gallery, "c", batch_size=100)

    again = gallery.add_faces_bulk("c", pairs)
    partly = gallery.add_faces_bulk("c", [*pairs[:3], ("p9", make_face(image="new.jpg"))])

    assert first == BulkResult(added=8, existing=0)
    assert again == BulkResult(added=0, existing=8)
    assert partly == BulkResult(added=1, existing=3)
    assert exported(gallery, "c", batch_size=100)[:8] == faces_before
    assert gallery.stats() == {"c": 9}


def test_bulk_import_of_one_image_twice_in_a_batch_stores_it_once(
    gallery: Gallery, make_face: MakeFace
) -> None:
    pairs = [("alice", make_face(image="a.jpg")), ("alice", make_face(image="a.jpg"))]
    assert gallery.add_faces_bulk("c", pairs) == BulkResult(added=1, existing=1)
    assert gallery.get_subject("c", "alice")[0].face_count == 1


def test_bulk_import_and_add_faces_agree_on_what_exists(
    gallery: Gallery, make_face: MakeFace
) -> None:
    [(record, _)] = gallery.add_faces("c", "alice", [make_face(image="a.jpg")])

    result = gallery.add_faces_bulk("c", [("alice", make_face(image="a.jpg"))])
    [(again, created)] = gallery.add_faces("c", "alice", [make_face(image="a.jpg")])

    assert result == BulkResult(added=0, existing=1)
    assert (again, created) == (record, False)


def test_bulk_import_keeps_aligned_crops(gallery: Gallery, make_face: MakeFace) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 16
    gallery.add_faces_bulk("c", [("alice", make_face(aligned_png=png)), ("bob", make_face())])
    assert [(record.subject, crop) for record, crop in gallery.aligned_crops("c")] == [
        ("alice", png)
    ]


def test_bulk_import_of_nothing_changes_nothing(gallery: Gallery) -> None:
    assert gallery.add_faces_bulk("c", []) == BulkResult(added=0, existing=0)
    assert gallery.stats() == {}


def test_a_bulk_import_with_one_bad_face_stores_none(gallery: Gallery, make_face: MakeFace) -> None:
    bad = make_face(np.ones(32, dtype=np.float32))  # not unit norm
    with pytest.raises(ValueError, match="L2-normalised"):
        gallery.add_faces_bulk("c", [("alice", make_face()), ("bob", bad)])
    assert gallery.stats() == {}


# --- export_embeddings ---------------------------------------------------------------------


def test_export_returns_every_face_in_insertion_order_in_batches(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    vectors = unit_vectors(7)
    ids = []
    for number, vector in enumerate(vectors):
        [(record, _)] = gallery.add_faces("c", f"p{number % 3}", [make_face(vector)])
        ids.append(record.face_id)
    gallery.add_faces("other", "intruder", [make_face()])

    batches = list(gallery.export_embeddings("c", batch_size=3))

    assert [len(batch.face_ids) for batch in batches] == [3, 3, 1]
    assert [face for batch in batches for face in batch.face_ids] == ids
    assert [s for batch in batches for s in batch.subjects] == [f"p{n % 3}" for n in range(7)]
    embeddings = np.concatenate([batch.embeddings for batch in batches])
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (7, 32)
    np.testing.assert_array_equal(embeddings, vectors)  # exact: nothing is rounded


def test_export_skips_deleted_faces_and_is_stable(gallery: Gallery, make_face: MakeFace) -> None:
    records = [gallery.add_faces("c", f"p{n}", [make_face()])[0][0] for n in range(5)]
    gallery.delete_face("c", records[1].face_id)
    gallery.delete_subject("c", "p3")

    first = exported(gallery, "c", batch_size=2)
    second = exported(gallery, "c", batch_size=10)

    assert (
        first
        == second
        == [("p0", records[0].face_id), ("p2", records[2].face_id), ("p4", records[4].face_id)]
    )


@pytest.mark.parametrize("collection", ["empty", "never-used"])
def test_export_of_a_collection_without_faces_is_empty(
    gallery: Gallery, make_face: MakeFace, collection: str
) -> None:
    [(record, _)] = gallery.add_faces("empty", "x", [make_face()])
    gallery.delete_face("empty", record.face_id)
    assert list(gallery.export_embeddings(collection, batch_size=10)) == []


def test_export_rejects_a_non_positive_batch_size(gallery: Gallery) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        list(gallery.export_embeddings("c", batch_size=0))


def test_an_export_imports_into_another_collection(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    vectors = unit_vectors(6)
    for number, vector in enumerate(vectors):
        gallery.add_faces("c", f"p{number % 2}", [make_face(vector)])
    batches = list(gallery.export_embeddings("c", batch_size=4))
    pairs = [
        (subject, make_face(embedding, image=face_id))
        for batch in batches
        for subject, face_id, embedding in zip(
            batch.subjects, batch.face_ids, batch.embeddings, strict=True
        )
    ]

    assert gallery.add_faces_bulk("copy", pairs) == BulkResult(added=6, existing=0)
    queries = unit_vectors(4)
    original = [[h.subject for h in hits] for hits in gallery.search("c", queries, top_k=2)]
    copied = [[h.subject for h in hits] for hits in gallery.search("copy", queries, top_k=2)]
    assert copied == original


# --- collection_version ---------------------------------------------------------------------


def test_collection_version_changes_with_every_change_of_faces(
    gallery: Gallery, make_face: MakeFace
) -> None:
    seen = [gallery.collection_version("c")]

    def changed() -> None:
        version = gallery.collection_version("c")
        assert version not in seen
        seen.append(version)

    [(record, _), _] = gallery.add_faces("c", "alice", [make_face(), make_face()])
    changed()
    gallery.add_faces_bulk("c", [("bob", make_face())])
    changed()
    gallery.delete_face("c", record.face_id)
    changed()
    gallery.delete_subject("c", "bob")
    changed()


def test_collection_version_ignores_other_collections_and_no_op_writes(
    gallery: Gallery, make_face: MakeFace
) -> None:
    gallery.add_faces("c", "alice", [make_face(image="a.jpg")])
    version = gallery.collection_version("c")

    gallery.add_faces("other", "bob", [make_face()])
    gallery.add_faces("c", "alice", [make_face(image="a.jpg")])  # already there
    gallery.add_faces_bulk("c", [("alice", make_face(image="a.jpg"))])

    assert gallery.collection_version("c") == version
