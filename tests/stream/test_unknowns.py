"""The unknown faces' store: stable ids, best crops, matching returns, bounds and scope."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.types import Detection
from app.errors import UnknownNotFound
from app.stream.unknowns import UNKNOWN_ID_PREFIX, UnknownCrop, UnknownStore

THRESHOLD = 0.35


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def direction(angle_degrees: float) -> np.ndarray:
    angle = np.radians(angle_degrees)
    return np.array([np.cos(angle), np.sin(angle)], np.float32)


def crop(angle: float, quality: float = 0.5, frame: str = "f0") -> UnknownCrop:
    """A crop whose embedding points at ``angle`` degrees (cos 0.35 is about 69.5 degrees)."""
    return UnknownCrop(
        aligned=np.zeros((112, 112, 3), np.uint8),
        embedding=direction(angle),
        detection=Detection(bbox=(0, 0, 80, 80), score=0.9, landmarks=np.zeros((5, 2))),
        quality=quality,
        frame_sha256=frame,
    )


def store(clock: Clock, **limits: float) -> UnknownStore:
    values = {"capacity": 8, "crops_per_face": 2, "ttl_s": 60.0, **limits}
    return UnknownStore(clock=clock, **values)  # type: ignore[arg-type]


def remember(unknowns: UnknownStore, *crops: UnknownCrop, **where: str | None) -> str:
    scope: dict[str, str | None] = {"stream_id": "s1", "collection": "c", "owner": "k1", **where}
    return unknowns.remember(crops=crops, threshold=THRESHOLD, **scope)  # type: ignore[arg-type]


def test_ids_are_unguessable_and_a_returning_face_gets_its_old_id() -> None:
    unknowns = store(Clock())
    first = remember(unknowns, crop(0))
    other = remember(unknowns, crop(90))  # cos 0: somebody else
    assert first.startswith(UNKNOWN_ID_PREFIX)
    assert len(first) >= len(UNKNOWN_ID_PREFIX) + 16
    assert other != first
    assert remember(unknowns, crop(20)) == first  # cos 0.94: the same person back
    assert len(unknowns) == 2


def test_only_the_stream_that_saw_a_face_matches_it_back() -> None:
    unknowns = store(Clock())
    first = remember(unknowns, crop(0))
    assert remember(unknowns, crop(0), stream_id="s2") != first
    assert remember(unknowns, crop(0), owner="k2") != first


def test_an_unknown_keeps_its_best_crops_one_per_frame() -> None:
    unknowns = store(Clock(), crops_per_face=2)
    face_id = remember(unknowns, crop(0, 0.2, "a"), crop(0, 0.9, "b"))
    remember(unknowns, crop(0, 0.5, "c"), crop(0, 0.95, "b"), unknown_id=face_id)
    kept = unknowns.lookup(face_id, collection="c", owner="k1").crops
    assert [(c.frame_sha256, c.quality) for c in kept] == [("b", 0.95), ("c", 0.5)]


def test_lookups_outside_the_collection_or_key_read_as_not_found() -> None:
    unknowns = store(Clock())
    face_id = remember(unknowns, crop(0))
    assert unknowns.lookup(face_id, collection="c", owner="k1").unknown_id == face_id
    for collection, owner, unknown_id in [
        ("other", "k1", face_id),
        ("c", "k2", face_id),
        ("c", None, face_id),
        ("c", "k1", "unk_guessed"),
    ]:
        with pytest.raises(UnknownNotFound):
            unknowns.lookup(unknown_id, collection=collection, owner=owner)


def test_unknowns_expire_after_the_window_unless_seen() -> None:
    clock = Clock()
    unknowns = store(clock, ttl_s=60.0)
    seen, unseen = remember(unknowns, crop(0)), remember(unknowns, crop(90))
    clock.now = 50.0
    unknowns.touch([seen])
    clock.now = 100.0
    assert unknowns.lookup(seen, collection="c", owner="k1").unknown_id == seen
    with pytest.raises(UnknownNotFound):
        unknowns.lookup(unseen, collection="c", owner="k1")
    # A track that still shows its id re-creates a forgotten unknown under the same id.
    assert remember(unknowns, crop(90), unknown_id=unseen) == unseen


def test_the_least_recently_seen_unknown_goes_first_when_full() -> None:
    clock = Clock()
    unknowns = store(clock, capacity=2)
    first = remember(unknowns, crop(0))
    clock.now = 1.0
    second = remember(unknowns, crop(90))
    clock.now = 2.0
    unknowns.touch([first])
    remember(unknowns, crop(180))
    assert len(unknowns) == 2
    assert unknowns.lookup(first, collection="c", owner="k1").unknown_id == first
    with pytest.raises(UnknownNotFound):
        unknowns.lookup(second, collection="c", owner="k1")


@pytest.mark.parametrize("limits", [{"capacity": 0}, {"crops_per_face": 0}, {"ttl_s": 0.0}])
def test_the_store_refuses_meaningless_bounds(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        store(Clock(), **limits)
