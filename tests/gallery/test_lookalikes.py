"""The look-alike report over a real embedded gallery: subjects whose faces are close are
paired, most similar first, each pair once; the scan is cached per collection version and
capped (a partial report says so)."""

from __future__ import annotations

import threading

import numpy as np

from app.core.lookalikes import LookalikeReports, scan_lookalikes
from app.core.types import FloatArray
from app.gallery.embedded import EmbeddedGallery
from tests.gallery.conftest import MakeFace, NearVector, UnitVectors


def enroll_twins(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    """ann and anna share a face (twins); bob, carl, dora are strangers to everyone."""
    base = unit_vectors(4)
    gallery.add_faces("c", "ann", [make_face(base[0]), make_face(near(base[0]))])
    gallery.add_faces("c", "anna", [make_face(near(base[0]))])
    for name, vector in zip(("bob", "carl", "dora"), base[1:], strict=True):
        gallery.add_faces("c", name, [make_face(vector)])


def test_twins_are_the_closest_pair_and_each_pair_appears_once(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    enroll_twins(gallery, unit_vectors, near, make_face)
    report = scan_lookalikes(gallery, "c", max_faces=100, keep=10)

    first = report.pairs[0]
    assert (first.subject_a, first.subject_b) == ("ann", "anna")
    assert first.similarity > 0.9
    keys = [(p.subject_a, p.subject_b) for p in report.pairs]
    assert len(keys) == len(set(keys))
    assert all(p.subject_a < p.subject_b for p in report.pairs)
    assert [p.similarity for p in report.pairs] == sorted(
        (p.similarity for p in report.pairs), reverse=True
    )
    assert (report.faces_scanned, report.complete) == (6, True)
    assert report.partners("anna", threshold=0.9) == [("ann", first.similarity)]
    assert report.partners("bob", threshold=0.9) == []


def test_the_face_ids_are_the_closest_faces_of_the_pair(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    enroll_twins(gallery, unit_vectors, near, make_face)
    first = scan_lookalikes(gallery, "c", max_faces=100, keep=10).pairs[0]
    hit = gallery.best_match_for_subject("c", "ann", embedding_of(gallery, first.face_b))
    assert hit.face_id == first.face_a
    assert np.isclose(hit.similarity, first.similarity, atol=1e-5)


def embedding_of(gallery: EmbeddedGallery, face_id: str) -> FloatArray:
    for batch in gallery.export_embeddings("c", batch_size=100):
        if face_id in batch.face_ids:
            row: FloatArray = batch.embeddings[batch.face_ids.index(face_id)]
            return row
    raise AssertionError(f"no face {face_id}")


def test_a_scan_over_the_cap_is_partial(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    enroll_twins(gallery, unit_vectors, near, make_face)
    report = scan_lookalikes(gallery, "c", max_faces=4, keep=10)
    assert (report.faces_scanned, report.complete) == (4, False)


def test_reports_are_cached_until_the_collection_changes(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    enroll_twins(gallery, unit_vectors, near, make_face)
    reports = LookalikeReports(gallery, max_faces=100, keep=10)
    assert reports.latest("c") is None
    first = reports.current("c")
    assert reports.current("c") is first
    gallery.delete_subject("c", "anna")
    second = reports.current("c")
    assert second is not first
    assert all("anna" not in (p.subject_a, p.subject_b) for p in second.pairs)
    assert reports.latest("c") is second


def test_concurrent_callers_share_one_scan(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    enroll_twins(gallery, unit_vectors, near, make_face)
    reports = LookalikeReports(gallery, max_faces=100, keep=10)
    results: list[object] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(reports.current("c"))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({id(result) for result in results}) == 1


def test_flags_start_a_background_scan_and_refresh_at_most_every_period(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    """``for_flags`` never waits: the first call starts the scan, later calls get its
    report; a change is rescanned only once ``refresh_s`` has passed since the last."""
    enroll_twins(gallery, unit_vectors, near, make_face)
    slow = LookalikeReports(gallery, max_faces=100, keep=10, refresh_s=3600)
    assert slow.for_flags("c") is None
    assert slow.settle(60)
    first = slow.for_flags("c")
    assert first is not None
    assert first.pairs[0].subject_b == "anna"
    gallery.delete_subject("c", "anna")
    assert slow.for_flags("c") is first  # changed, but refreshed less than an hour ago
    assert slow.settle(60)
    assert slow.latest("c") is first

    eager = LookalikeReports(gallery, max_faces=100, keep=10, refresh_s=1e-9)
    assert eager.for_flags("c") is None
    assert eager.settle(60)
    before = eager.latest("c")
    assert before is not None
    gallery.add_faces("c", "anna", [make_face(near(unit_vectors(1)[0]))])
    assert eager.for_flags("c") is before
    assert eager.settle(60)
    after = eager.latest("c")
    assert after is not None
    assert after.version == gallery.collection_version("c")
    assert after is not before


class GatedSlot:
    """A CPU slot that holds the first batch of a scan until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches = 0

    def __enter__(self) -> None:
        self.batches += 1
        self.entered.set()
        assert self.release.wait(60)

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_background_scan_holds_the_slot_per_batch_and_stops_at_close(
    gallery: EmbeddedGallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    vectors = unit_vectors(300)  # two batches of searches (SCAN_BATCH = 256)
    for number in range(0, 300, 3):
        gallery.add_faces("c", f"s{number}", [make_face(v) for v in vectors[number : number + 3]])
    slot = GatedSlot()
    reports = LookalikeReports(gallery, max_faces=1000, keep=10, slot=slot)
    assert reports.for_flags("c") is None
    assert slot.entered.wait(60)  # the first batch waits in the slot

    closer = threading.Thread(target=reports.close)
    closer.start()
    assert reports._stop.wait(60)  # close() has asked the scan to stop before it goes on
    slot.release.set()
    closer.join(60)
    assert not closer.is_alive()
    assert slot.batches == 1  # stopped before the second batch
    assert reports.latest("c") is None
    assert reports.for_flags("c") is None  # closed: nothing new starts
    assert slot.batches == 1
