"""Which tracks are recognised in a frame."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.types import Detection
from app.stream.reid import ReidPolicy, TrackIdentity, face_quality, select_for_recognition
from app.stream.voting import IdentityVotes, Observation


def face(size: float = 100.0, score: float = 0.9) -> Detection:
    return Detection(
        bbox=(0.0, 0.0, size, size), score=score, landmarks=np.zeros((5, 2), np.float32)
    )


def identity(*, decided: bool, last: int | None = None, quality: float = 90.0) -> TrackIdentity:
    votes = IdentityVotes(threshold=0.35, window=5, min_votes=2)
    if decided:
        votes.add(Observation("ada", 0.6))
        votes.add(Observation("ada", 0.6))
    track = TrackIdentity(votes)
    if last is not None:
        track.recognised(last, quality)
    return track


def test_undecided_tracks_come_first_and_the_cap_holds() -> None:
    faces = [
        (identity(decided=True, last=0), face()),  # due (interval 10, tick 20)
        (identity(decided=False), face()),  # new
        (identity(decided=True, last=19), face()),  # recognised last frame
    ]
    assert select_for_recognition(faces, 20, ReidPolicy(interval=10, max_per_frame=1)) == [1]
    assert select_for_recognition(faces, 20, ReidPolicy(interval=10, max_per_frame=2)) == [1, 0]


def test_decided_tracks_wait_for_the_interval() -> None:
    faces = [(identity(decided=True, last=10), face())]
    policy = ReidPolicy(interval=10)
    assert select_for_recognition(faces, 19, policy) == []
    assert select_for_recognition(faces, 20, policy) == [0]


def test_oldest_recognition_is_due_first() -> None:
    faces = [
        (identity(decided=True, last=5), face()),
        (identity(decided=True, last=2), face()),
    ]
    assert select_for_recognition(faces, 30, ReidPolicy(interval=10, max_per_frame=1)) == [1]


def test_a_better_view_of_a_face_is_recognised_early() -> None:
    small = face(size=40)
    track = identity(decided=True, last=10, quality=face_quality(small))
    policy = ReidPolicy(interval=10, quality_gain=1.25)
    assert select_for_recognition([(track, face(size=45))], 11, policy) == []
    assert select_for_recognition([(track, face(size=60))], 11, policy) == [0]


def test_stale_tracks_are_recognised_at_once() -> None:
    track = identity(decided=True, last=10)
    track.mark_stale()
    assert select_for_recognition([(track, face())], 11, ReidPolicy(interval=10)) == [0]
    assert track.votes.decision is not None  # the name stays until new votes agree


def test_baseline_policy_recognises_every_face_every_frame() -> None:
    faces = [(identity(decided=True, last=9), face()) for _ in range(3)]
    assert select_for_recognition(faces, 10, ReidPolicy(interval=1, max_per_frame=0)) == [
        0,
        1,
        2,
    ]


def test_quality_is_capped_at_the_aligned_crop_size() -> None:
    assert face_quality(face(size=500, score=1.0)) == pytest.approx(112.0)
    assert face_quality(face(size=50, score=0.5)) == pytest.approx(25.0)


@pytest.mark.parametrize(
    "arguments",
    [{"interval": 0}, {"max_per_frame": -1}, {"quality_gain": 0.9}],
)
def test_policy_rejects_invalid_values(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="interval"):
        ReidPolicy(**arguments)  # type: ignore[arg-type]
