"""Which tracks are recognised in a frame, and when a named track stops being re-identified."""

from __future__ import annotations

import numpy as np
import pytest

from app.stream.appearance import FaceView
from app.stream.reid import ReidPolicy, TrackIdentity, select_for_recognition
from app.stream.voting import IdentityVotes, Observation

THRESHOLD = 0.35


def view(seed: int) -> FaceView:
    vector = np.random.default_rng(seed).normal(size=64).astype(np.float32)
    return FaceView(signature=vector / np.linalg.norm(vector), sharpness=0.5)


def identity(
    *,
    decided: bool,
    last: int | None = None,
    quality: float = 0.6,
    similarity: float = 0.4,
    now_quality: float | None = None,
) -> TrackIdentity:
    """A track; ``decided`` ones are named "ada" at ``similarity`` (0.4: not confident)."""
    votes = IdentityVotes(threshold=THRESHOLD, window=5, min_votes=2)
    if decided:
        votes.add(Observation("ada", similarity))
        votes.add(Observation("ada", similarity))
    track = TrackIdentity(votes)
    first = view(1)
    if last is not None:
        track.recognised(last, quality, first.signature)
    track.observe(first, quality if now_quality is None else now_quality)
    return track


def test_undecided_tracks_come_first_and_the_cap_holds() -> None:
    tracks = [
        identity(decided=True, last=0),  # due (interval 10, tick 20)
        identity(decided=False),  # new
        identity(decided=True, last=19),  # recognised last frame
    ]
    assert select_for_recognition(tracks, 20, ReidPolicy(interval=10, max_per_frame=1)) == [1]
    assert select_for_recognition(tracks, 20, ReidPolicy(interval=10, max_per_frame=2)) == [1, 0]


def test_doubtful_names_wait_for_the_interval() -> None:
    tracks = [identity(decided=True, last=10, similarity=0.4)]
    policy = ReidPolicy(interval=10, confident_margin=0.1)
    assert select_for_recognition(tracks, 19, policy) == []
    assert select_for_recognition(tracks, 20, policy) == [0]


def test_a_confident_name_is_not_reidentified_on_a_timer() -> None:
    track = identity(decided=True, last=10, similarity=0.6)
    policy = ReidPolicy(interval=10, confident_margin=0.1)
    assert track.confidently_named(policy.confident_margin)
    assert select_for_recognition([track], 10_000, policy) == []


def test_a_confident_name_is_reidentified_when_its_view_drifts() -> None:
    track = identity(decided=True, last=10, similarity=0.6)
    policy = ReidPolicy(interval=10, confident_margin=0.1, drift_similarity=0.8)
    track.observe(view(2), 0.6)  # an unrelated signature: similarity about 0
    assert track.drift is not None
    assert track.drift < 0.8
    assert select_for_recognition([track], 11, policy) == [0]


def test_oldest_recognition_is_due_first() -> None:
    tracks = [identity(decided=True, last=5), identity(decided=True, last=2)]
    assert select_for_recognition(tracks, 30, ReidPolicy(interval=10, max_per_frame=1)) == [1]


def test_a_better_view_of_a_face_is_recognised_early() -> None:
    policy = ReidPolicy(interval=10, quality_gain=1.25)
    slightly = identity(decided=True, last=10, similarity=0.6, quality=0.4, now_quality=0.45)
    much = identity(decided=True, last=10, similarity=0.6, quality=0.4, now_quality=0.55)
    assert select_for_recognition([slightly], 11, policy) == []
    assert select_for_recognition([much], 11, policy) == [0]


def test_crops_below_the_minimum_quality_are_not_recognised() -> None:
    policy = ReidPolicy(min_quality=0.1)
    assert select_for_recognition([identity(decided=False, now_quality=0.05)], 1, policy) == []
    assert select_for_recognition([identity(decided=False, now_quality=0.2)], 1, policy) == [0]


def test_undecided_tracks_prefer_the_better_crop() -> None:
    tracks = [identity(decided=False, now_quality=0.3), identity(decided=False, now_quality=0.7)]
    assert select_for_recognition(tracks, 1, ReidPolicy(max_per_frame=1)) == [1]


def test_stale_tracks_are_recognised_at_once() -> None:
    track = identity(decided=True, last=10, similarity=0.6)
    track.mark_stale()
    assert select_for_recognition([track], 11, ReidPolicy(interval=10)) == [0]
    assert track.votes.decision is not None  # the name stays until new votes agree


def test_a_track_recognised_on_this_tick_is_not_picked_again() -> None:
    track = identity(decided=False, last=7)
    assert select_for_recognition([track], 7, ReidPolicy()) == []


def test_baseline_policy_recognises_every_face_every_frame() -> None:
    tracks = [identity(decided=True, last=9, similarity=0.9) for _ in range(3)]
    every = ReidPolicy(interval=1, max_per_frame=0, min_quality=0, confident_margin=3)
    assert select_for_recognition(tracks, 10, every) == [0, 1, 2]


def test_same_person_compares_embeddings_at_the_vote_threshold() -> None:
    track = identity(decided=True, last=1)
    assert track.same_person(np.array([1.0, 0.0], np.float32)) is None  # never recognised
    track.embeddings.append(np.array([1.0, 0.0], np.float32))
    assert track.same_person(np.array([0.8, 0.6], np.float32)) is True
    assert track.same_person(np.array([0.3, 0.954], np.float32)) is False


@pytest.mark.parametrize(
    "arguments",
    [
        {"interval": 0},
        {"max_per_frame": -1},
        {"quality_gain": 0.9},
        {"min_quality": 1.5},
        {"drift_similarity": 2.0},
    ],
)
def test_policy_rejects_invalid_values(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        ReidPolicy(**arguments)  # type: ignore[arg-type]


def test_a_stale_track_stays_due_until_new_recognitions_decide() -> None:
    track = identity(decided=True, last=10, similarity=0.9)
    track.mark_stale()  # the subject was deleted, say
    policy = ReidPolicy(interval=10, confident_margin=0.1)
    track.votes.add(Observation(None, 0.05))
    track.recognised(11, 0.6, view(1).signature)
    # One unknown cannot overturn the name yet; the track must not rest as "confident".
    assert track.votes.decision is not None
    assert track.votes.decision.subject == "ada"
    assert track.stale
    assert select_for_recognition([track], 12, policy) == [0]
    track.votes.add(Observation(None, 0.05))
    track.recognised(12, 0.6, view(1).signature)
    assert not track.stale
    assert track.votes.decision is not None
    assert track.votes.decision.subject is None


def test_a_name_the_latest_recognition_contradicts_is_not_confident() -> None:
    track = identity(decided=True, last=10, similarity=0.9)
    assert track.confidently_named(0.1)
    track.votes.add(Observation("bob", 0.5))
    assert track.votes.decision is not None
    assert track.votes.decision.subject == "ada"
    assert not track.confidently_named(0.1)
