"""One subject per look-alike name within a collection, enforced by the store (every backend).

"Ada", "ADA" and "Ａｄａ" share one ``app.core.names.name_key``: the second spelling is
refused with ``NameConflict`` by the write itself, atomically, whoever races it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from app.core.gallery import Gallery
from app.core.types import NewFace
from app.errors import NameConflict, SubjectNotFound
from tests.workers import Workers

MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., Gallery]

# Spellings of one name key; racers each take one.
SPELLINGS = ("Ada", "ADA", "ada", "aDA", "\uff21\uff44\uff41", "AdA", " ada", "ADa")
RACE_ROUNDS = 5
TIMEOUT_S = 60


def subject_names(gallery: Gallery, collection: str) -> list[str]:
    page, total = gallery.list_subjects(collection, limit=100, offset=0)
    assert total == len(page)
    return [summary.subject for summary in page]


@pytest.mark.parametrize("look_alike", ["ADA", "ada", "\uff21\uff44\uff41", "  Ada", "aDa"])
def test_a_look_alike_of_an_existing_subject_is_refused(
    gallery: Gallery, make_face: MakeFace, look_alike: str
) -> None:
    gallery.add_faces("c", "Ada", [make_face()])

    with pytest.raises(NameConflict) as refused:
        gallery.add_faces("c", look_alike, [make_face()])

    assert refused.value.code == "name_conflict"
    assert refused.value.details == {"collection": "c", "existing": "Ada"}
    assert "'Ada'" in refused.value.message
    assert subject_names(gallery, "c") == ["Ada"]
    assert gallery.stats() == {"c": 1}
    with pytest.raises(SubjectNotFound):
        gallery.get_subject("c", look_alike)


def test_more_faces_under_the_same_name_are_accepted(gallery: Gallery, make_face: MakeFace) -> None:
    gallery.add_faces("c", "Ada", [make_face()])
    [(_, created)] = gallery.add_faces("c", "Ada", [make_face()])

    assert created
    assert gallery.get_subject("c", "Ada")[0].face_count == 2
    assert gallery.look_alike_of("c", "Ada") is None


def test_look_alike_of_is_the_cheap_check_the_write_agrees_with(
    gallery: Gallery, make_face: MakeFace
) -> None:
    gallery.add_faces("c", "Ada", [make_face()])

    assert gallery.look_alike_of("c", "ADA") == "Ada"
    assert gallery.look_alike_of("c", "\uff21\uff44\uff41") == "Ada"
    assert gallery.look_alike_of("c", "Ada") is None  # exists: more faces are fine
    assert gallery.look_alike_of("c", "Grace") is None
    assert gallery.look_alike_of("elsewhere", "ADA") is None
    assert gallery.look_alike_of("never-written", "Ada") is None


def test_collections_are_separate_namespaces_for_names(
    gallery: Gallery, make_face: MakeFace
) -> None:
    gallery.add_faces("c", "Ada", [make_face()])
    gallery.add_faces("d", "ADA", [make_face()])

    assert subject_names(gallery, "c") == ["Ada"]
    assert subject_names(gallery, "d") == ["ADA"]


def test_a_deleted_subject_frees_its_name_for_another_spelling(
    gallery: Gallery, make_face: MakeFace
) -> None:
    gallery.add_faces("c", "Grace", [make_face()])
    assert gallery.delete_subject("c", "Grace") == 1
    gallery.add_faces("c", "GRACE", [make_face()])

    assert subject_names(gallery, "c") == ["GRACE"]


def test_deleting_the_last_face_frees_the_name_too(gallery: Gallery, make_face: MakeFace) -> None:
    [(record, _)] = gallery.add_faces("c", "Grace", [make_face()])
    gallery.delete_face("c", record.face_id)
    gallery.add_faces("c", "gRACE", [make_face()])

    assert subject_names(gallery, "c") == ["gRACE"]


def test_a_bulk_import_with_a_look_alike_adds_nothing(
    gallery: Gallery, make_face: MakeFace
) -> None:
    gallery.add_faces("c", "Ada", [make_face()])

    with pytest.raises(NameConflict) as refused:
        gallery.add_faces_bulk("c", [("Bob", make_face()), ("ADA", make_face())])

    assert refused.value.details["existing"] == "Ada"
    assert subject_names(gallery, "c") == ["Ada"]
    assert gallery.stats() == {"c": 1}


def test_look_alikes_within_one_bulk_batch_are_refused(
    gallery: Gallery, make_face: MakeFace
) -> None:
    with pytest.raises(NameConflict) as refused:
        gallery.add_faces_bulk("c", [("Zoe", make_face()), ("ZOE", make_face())])

    assert refused.value.details["existing"] == "Zoe"
    assert subject_names(gallery, "c") == []
    result = gallery.add_faces_bulk("c", [("Zoe", make_face()), ("Zoe", make_face())])
    assert (result.added, subject_names(gallery, "c")) == (2, ["Zoe"])


def race_look_alikes(galleries: list[Gallery], collection: str, faces: list[NewFace]) -> None:
    """Every spelling of ``SPELLINGS`` enrolled at once (racers spread over ``galleries``):
    exactly one wins, every other is refused naming the winner."""
    start = threading.Barrier(len(SPELLINGS))

    def enroll(gallery: Gallery, name: str, face: NewFace) -> str | None:
        start.wait(TIMEOUT_S)
        try:
            gallery.add_faces(collection, name, [face])
        except NameConflict as refused:
            return str(refused.details["existing"])
        return None

    workers = Workers()
    for number, (name, face) in enumerate(zip(SPELLINGS, faces, strict=True)):
        workers.start(enroll, galleries[number % len(galleries)], name, face)
    outcomes = workers.join(TIMEOUT_S)

    winners = [name for name, existing in zip(SPELLINGS, outcomes, strict=True) if existing is None]
    assert len(winners) == 1, outcomes
    assert [existing for existing in outcomes if existing is not None] == [winners[0]] * (
        len(SPELLINGS) - 1
    )
    for gallery in galleries:
        assert subject_names(gallery, collection) == winners
        assert gallery.get_subject(collection, winners[0])[0].face_count == 1


def test_threads_racing_with_look_alike_names_leave_exactly_one_subject(
    gallery: Gallery, make_face: MakeFace
) -> None:
    for round_ in range(RACE_ROUNDS):
        race_look_alikes([gallery], f"race-{round_}", [make_face() for _ in SPELLINGS])
