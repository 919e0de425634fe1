"""``app.core.swap.synchronise`` between two real embedded galleries (generations).

The embedder is a stand-in (a seeded vector per crop's bytes): what is under test is
the copying, the catching up and the write barrier, not a model.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.swap import ProgressBoard, SwapCancelled, SwapProgress, SyncControls, synchronise
from app.core.thresholds import CollectionSettings
from app.core.types import FloatArray, NewFace
from app.errors import GenerationRetired
from app.gallery.embedded import EmbeddedGallery
from app.storage.sqlite import utc_now
from tests.workers import Workers

OLD_DIM, NEW_DIM = 16, 24


def crop_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def vector(data: bytes, dim: int) -> FloatArray:
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    values = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return values / np.linalg.norm(values)


def new_embed(crops: list[bytes]) -> FloatArray:
    return np.stack([vector(png, NEW_DIM) for png in crops])


def face(seed: int, *, crop: bool = True) -> NewFace:
    png = crop_png(seed)
    return NewFace(
        image_sha256=hashlib.sha256(f"photo-{seed}".encode()).hexdigest(),
        bbox=(1.0, 2.0, 3.0, 4.0),
        det_score=0.9,
        embedding=vector(png, OLD_DIM),
        aligned_png=png if crop else None,
    )


@pytest.fixture
def source(tmp_path: Path) -> Iterator[EmbeddedGallery]:
    with EmbeddedGallery(tmp_path / "old", model_id="old-model", dim=OLD_DIM) as gallery:
        yield gallery


@pytest.fixture
def target(tmp_path: Path) -> Iterator[EmbeddedGallery]:
    with EmbeddedGallery(tmp_path / "new", model_id="new-model", dim=NEW_DIM) as gallery:
        yield gallery


def board() -> ProgressBoard:
    progress = ProgressBoard()
    progress.show(SwapProgress("activate", "loading", 1, "new-model", utc_now(), None))
    return progress


def enroll_people(gallery: EmbeddedGallery, people: int, faces_each: int) -> None:
    for person in range(people):
        gallery.add_faces(
            "office",
            f"person-{person}",
            [face(100 * person + n) for n in range(faces_each)],
        )


def records_by_face_id(gallery: EmbeddedGallery) -> dict[str, tuple[str, str, object]]:
    held = {}
    for collection in gallery.stats():
        for summary in gallery.list_subjects(collection, limit=1000, offset=0)[0]:
            for record in gallery.get_subject(collection, summary.subject)[1]:
                held[record.face_id] = (record.subject, record.image_sha256, record.created_at)
    return held


def test_the_target_gets_every_face_re_embedded_under_its_own_face_id(
    source: EmbeddedGallery, target: EmbeddedGallery
) -> None:
    enroll_people(source, people=5, faces_each=3)
    source.set_collection_settings("office", CollectionSettings(target_fpir=0.01))
    progress = board()
    switched = []

    synchronise(
        source,
        target,
        new_embed,
        progress,
        switch=lambda: switched.append(True),
        controls=SyncControls(pause=lambda: None, stopping=lambda: False, batch_size=4),
    )

    assert switched == [True]
    assert records_by_face_id(target) == records_by_face_id(source)
    assert target.stats() == {"office": 15}
    record, png = target.crops_of(sorted(target.face_ids()))[0]
    hit = target.search("office", vector(png, NEW_DIM)[None, :], 1)[0][0]
    assert (hit.face_id, round(hit.similarity, 4)) == (record.face_id, 1.0)
    assert target.collection_settings("office").target_fpir == 0.01
    done = progress.snapshot()
    assert done is not None
    assert (done.faces_done, done.faces_total, done.state) == (15, 15, "switching")


def test_enrollments_and_deletions_during_the_copy_are_caught_up(
    source: EmbeddedGallery, target: EmbeddedGallery
) -> None:
    enroll_people(source, people=4, faces_each=3)
    steps = iter(range(1000))
    doomed: list[str] = []

    def write_meanwhile() -> None:
        step = next(steps)
        if step == 1:  # a subject with a face copied already: the target must lose it
            copied = sorted(target.face_ids())[0]
            (record, _), *_ = source.crops_of([copied])
            doomed.extend(r.face_id for r in source.get_subject("office", record.subject)[1])
            source.delete_subject("office", record.subject)
            source.add_faces("office", "late", [face(9001), face(9002)])
        if step == 3:
            source.delete_face("office", source.get_subject("office", "late")[1][0].face_id)
            source.add_faces("lobby", "visitor", [face(9100)])

    progress = board()
    synchronise(
        source,
        target,
        new_embed,
        progress,
        switch=lambda: None,
        controls=SyncControls(pause=write_meanwhile, stopping=lambda: False, batch_size=2),
    )

    assert records_by_face_id(target) == records_by_face_id(source)
    assert doomed
    assert not set(doomed) & target.face_ids()
    assert target.stats() == {"lobby": 1, "office": 10}
    done = progress.snapshot()
    assert done is not None
    assert done.faces_removed >= 1


def test_a_write_waiting_at_the_barrier_fails_retryably_once_the_switch_is_made(
    source: EmbeddedGallery, target: EmbeddedGallery
) -> None:
    enroll_people(source, people=2, faces_each=2)
    workers = Workers()
    writer_started = threading.Event()

    def enroll_at_the_barrier() -> str:
        writer_started.set()
        try:
            source.add_faces("office", "too-late", [face(7000)])
        except GenerationRetired as exc:
            return exc.code
        return "written"

    def switch() -> None:
        workers.start(enroll_at_the_barrier)
        writer_started.wait()

    synchronise(
        source,
        target,
        new_embed,
        board(),
        switch=switch,
        controls=SyncControls(pause=lambda: None, stopping=lambda: False),
    )

    assert workers.join(30) == ["model_switched"]
    assert "too-late" not in {
        s.subject for s in source.list_subjects("office", limit=9, offset=0)[0]
    }
    with pytest.raises(GenerationRetired):
        source.delete_subject("office", "person-0")
    target.add_faces(
        "office", "on-time", [NewFace("ab" * 32, (0, 0, 1, 1), 0.9, new_embed([crop_png(1)])[0])]
    )


def test_a_stopping_service_cancels_the_copy_and_the_source_keeps_serving(
    source: EmbeddedGallery, target: EmbeddedGallery
) -> None:
    enroll_people(source, people=3, faces_each=3)
    switched = []

    with pytest.raises(SwapCancelled):
        synchronise(
            source,
            target,
            new_embed,
            board(),
            switch=lambda: switched.append(True),
            controls=SyncControls(pause=lambda: None, stopping=lambda: True, batch_size=2),
        )

    assert switched == []
    source.add_faces("office", "still-writable", [face(5)])


def test_faces_without_a_crop_are_skipped_and_counted(
    source: EmbeddedGallery, target: EmbeddedGallery
) -> None:
    source.add_faces("office", "kept", [face(1), face(2, crop=False)])
    progress = board()

    synchronise(
        source,
        target,
        new_embed,
        progress,
        switch=lambda: None,
        controls=SyncControls(pause=lambda: None, stopping=lambda: False),
    )

    assert source.faces_without_crop() == 1
    assert target.stats() == {"office": 1}
    done = progress.snapshot()
    assert done is not None
    assert done.faces_skipped == 1
