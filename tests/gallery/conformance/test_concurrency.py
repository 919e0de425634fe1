"""Searches and writes from many threads at once (every backend)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from app.core.gallery import Gallery
from app.core.types import FloatArray, NewFace
from tests.workers import Workers

UnitVectors = Callable[[int], FloatArray]
MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., Gallery]

SEARCHERS = 4
WRITES_PER_WRITER = 40
TIMEOUT_S = 30


def test_searches_during_adds_and_deletes_see_consistent_results(
    open_gallery: OpenGallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    gallery = open_gallery()
    for number in range(20):
        gallery.add_faces("c", f"resident-{number}", [make_face(), make_face()])
    queries = unit_vectors(8)
    new_faces = [make_face() for _ in range(WRITES_PER_WRITER)]  # built here: rng is not shared
    writers_done = threading.Event()
    searches = [0] * SEARCHERS

    def search(slot: int) -> Callable[[], None]:
        def loop() -> None:
            while not writers_done.is_set() or searches[slot] == 0:
                for hits in gallery.search("c", queries, top_k=5):
                    subjects = [hit.subject for hit in hits]
                    similarities = [hit.similarity for hit in hits]
                    assert len(set(subjects)) == len(subjects) == 5
                    assert similarities == sorted(similarities, reverse=True)
                searches[slot] += 1

        return loop

    def add() -> None:
        for number, face in enumerate(new_faces):
            gallery.add_faces("c", f"newcomer-{number % 10}", [face])

    def delete() -> None:
        for number in range(10):
            gallery.delete_subject("c", f"resident-{number}")
            _, faces = gallery.get_subject("c", f"resident-{number + 10}")
            gallery.delete_face("c", faces[0].face_id)

    searchers, writers = Workers(), Workers()
    for slot in range(SEARCHERS):
        searchers.start(search(slot))
    for work in (add, delete):
        writers.start(work)
    try:
        writers.join(TIMEOUT_S)
    finally:
        writers_done.set()  # the searchers stop even when a writer failed
        searchers.join(TIMEOUT_S)

    assert all(count > 0 for count in searches)
    expected_faces = 20 * 2 - 10 * 2 - 10 + WRITES_PER_WRITER
    assert gallery.stats() == {"c": expected_faces}
    subjects, total = gallery.list_subjects("c", limit=100, offset=0)
    assert total == 20
    assert sum(s.face_count for s in subjects) == expected_faces
    live = gallery.search("c", queries, top_k=5)
    gallery.close()
    assert open_gallery().search("c", queries, top_k=5) == live  # the cache matches SQLite


def test_concurrent_enrolments_of_one_image_store_it_once(
    gallery: Gallery, make_face: MakeFace
) -> None:
    start = threading.Barrier(8, timeout=TIMEOUT_S)

    def enroll() -> bool:
        start.wait()
        [(_, was_created)] = gallery.add_faces("c", "alice", [make_face(image="same.jpg")])
        return was_created

    workers = Workers()
    for _ in range(8):
        workers.start(enroll)
    created = workers.join(TIMEOUT_S)

    assert sorted(created) == [False] * 7 + [True]
    assert gallery.total_faces() == 1
    assert gallery.get_subject("c", "alice")[0].face_count == 1
