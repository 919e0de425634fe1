"""A stream session on the real models: answers without recognition, results folded later."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.stream.session import StreamSession, VoteRule

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.stream.conftest import EnrollPeople, LoadPhoto, MovingFrames

BUSH_NAME = "George W. Bush"
Jpeg = Callable[[Any], bytes]


@pytest.fixture(scope="module")
def bush_frames(
    load_photo: LoadPhoto, lfw_photo: LfwPhoto, moving_frames: MovingFrames, jpeg: Jpeg
) -> list[bytes]:
    photo = load_photo(lfw_photo("George_W_Bush", 65))
    return [jpeg(frame) for frame in moving_frames([(photo, (60, 100))], 12)]


def open_session(client: TestClient, collection: str, *, instant: bool = False) -> StreamSession:
    """A session of the app's engine; without ``instant``, a name always needs two votes."""
    engine = client.app.state.streams.engine  # type: ignore[attr-defined]
    if not instant:
        engine = replace(engine, votes=VoteRule(window=5, min_votes=2))
    session: StreamSession = engine.open_session(collection)
    return session


def test_a_frame_is_answered_unnamed_and_its_recognition_names_the_track_later(
    client: TestClient, collection: str, enroll_people: EnrollPeople, bush_frames: list[bytes]
) -> None:
    enroll_people(client, collection)
    session = open_session(client, collection)
    first = session.process(bush_frames[0], 0)
    assert first.job is not None
    assert first.recognised == []
    (face,) = first.faces
    assert face.subject is None
    assert face.similarity is None
    assert [tracked.track_id for tracked in first.job.tracked] == [face.track_id]

    # While the recognition runs, frames are answered and no second one is picked.
    busy = session.process(bush_frames[1], 1, may_recognise=False)
    assert busy.job is None
    assert busy.recognised == []
    outcome = session.recognise(first.job)
    second = session.process(bush_frames[2], 2, [outcome])
    assert second.recognised == [face.track_id]
    assert second.faces[0].subject is None  # one vote of the two needed
    assert second.job is not None
    third = session.process(bush_frames[3], 3, [session.recognise(second.job)])
    assert [(f.track_id, f.subject) for f in third.faces] == [(face.track_id, BUSH_NAME)]


def test_a_recognition_of_a_track_that_ended_meanwhile_is_dropped(
    client: TestClient,
    collection: str,
    enroll_people: EnrollPeople,
    bush_frames: list[bytes],
    jpeg: Jpeg,
) -> None:
    enroll_people(client, collection)
    session = open_session(client, collection)
    first = session.process(bush_frames[0], 0)
    assert first.job is not None
    outcome = session.recognise(first.job)
    empty = jpeg(np.full((480, 640, 3), 24, dtype=np.uint8))
    index = 1
    while first.faces[0].track_id in session.identities:  # the face leaves; its track ends
        assert not session.process(empty, index, may_recognise=False).faces
        index += 1
    back = session.process(bush_frames[0], index, [outcome])
    assert back.recognised == []
    (face,) = back.faces
    assert face.track_id != first.faces[0].track_id
    assert face.similarity is None  # nothing of the old track's result reached the new one


def test_a_recognition_against_a_gallery_changed_meanwhile_is_dropped(
    client: TestClient,
    collection: str,
    enroll_people: EnrollPeople,
    bush_frames: list[bytes],
    lfw_photo: LfwPhoto,
) -> None:
    enroll_people(client, collection)
    session = open_session(client, collection)
    first = session.process(bush_frames[0], 0)
    assert first.job is not None
    outcome = session.recognise(first.job)
    photo = lfw_photo("Gerhard_Schroeder", 25)
    enrolled = client.post(
        "/enroll",
        params={"collection": collection},
        data={"subject": "Gerhard Schroeder"},
        files=[("images", (photo.name, photo.read_bytes()))],
    )
    assert enrolled.status_code == 201, enrolled.text
    after = session.process(bush_frames[1], 1, [outcome])
    assert after.recognised == []
    assert after.job is not None  # the track is due again, against the new gallery


def test_one_clear_match_names_the_track_from_the_next_frame(
    client: TestClient, collection: str, enroll_people: EnrollPeople, bush_frames: list[bytes]
) -> None:
    enroll_people(client, collection)
    session = open_session(client, collection, instant=True)
    first = session.process(bush_frames[0], 0)
    assert first.job is not None
    outcome = session.recognise(first.job)
    (observation,) = outcome.observations
    instant = session.engine.votes.instant_similarity
    assert instant is not None
    assert observation.similarity >= instant  # this photo matches clearly
    second = session.process(bush_frames[1], 1, [outcome])
    assert [(f.track_id, f.subject) for f in second.faces] == [(first.faces[0].track_id, BUSH_NAME)]


def kiosk_frames(photo: Any, jpeg: Jpeg, count: int) -> list[bytes]:
    """``photo`` at the kiosk's place, drifting a pixel a frame."""
    canvas = np.full((480, 640, 3), 24, dtype=np.uint8)
    frames = []
    for step in range(count):
        frame = canvas.copy()
        top, left = 115 + step % 2, 195 + step
        frame[top : top + photo.shape[0], left : left + photo.shape[1]] = photo
        frames.append(jpeg(frame))
    return frames


def run(session: StreamSession, frames: list[bytes], start: int) -> list[Any]:
    """Frames back to back, each frame's job recognised before the next (lock-step)."""
    results, finished = [], []
    for offset, data in enumerate(frames):
        result = session.process(data, start + offset, finished)
        finished = [session.recognise(result.job)] if result.job is not None else []
        results.append(result)
    return results


def test_somebody_else_at_the_same_place_splits_the_track_on_their_first_frame(
    client: TestClient,
    collection: str,
    enroll_people: EnrollPeople,
    load_photo: LoadPhoto,
    lfw_photo: LfwPhoto,
    jpeg: Jpeg,
) -> None:
    enroll_people(client, collection)
    session = open_session(client, collection)
    bush = run(session, kiosk_frames(load_photo(lfw_photo("George_W_Bush", 65)), jpeg, 5), 0)
    (named,) = bush[-1].faces
    assert named.subject == BUSH_NAME
    rumsfeld = load_photo(lfw_photo("Donald_Rumsfeld", 51))
    (cut, *after) = run(session, kiosk_frames(rumsfeld, jpeg, 4), 5)  # no empty frame between
    (face,) = cut.faces
    assert cut.checked == 1  # the appearance signal fired and the face was embedded at once
    assert cut.split == [face.track_id]
    assert face.track_id != named.track_id
    assert face.subject != BUSH_NAME
    assert cut.recognised == [face.track_id]  # the check's match is the new track's first vote
    assert {f.track_id for result in after for f in result.faces} == {face.track_id}
    assert after[-1].faces[0].subject == "Donald Rumsfeld"


def test_the_same_person_in_another_photo_keeps_the_track_and_the_name(
    client: TestClient,
    collection: str,
    enroll_people: EnrollPeople,
    load_photo: LoadPhoto,
    lfw_photo: LfwPhoto,
    jpeg: Jpeg,
) -> None:
    enroll_people(client, collection)
    session = open_session(client, collection)
    first = run(session, kiosk_frames(load_photo(lfw_photo("George_W_Bush", 65)), jpeg, 5), 0)
    (named,) = first[-1].faces
    other_photo = load_photo(lfw_photo("George_W_Bush", 145))  # another day, another light
    (changed, *_) = run(session, kiosk_frames(other_photo, jpeg, 2), 5)
    (face,) = changed.faces
    assert changed.checked == 1  # the view changed enough to be checked...
    assert changed.split == []  # ...and the embeddings say it is still him
    assert (face.track_id, face.subject) == (named.track_id, BUSH_NAME)


def test_the_stream_applies_the_collections_identification_threshold(
    client: TestClient, collection: str, enroll_people: EnrollPeople, bush_frames: list[bytes]
) -> None:
    """The app's engine asks /identify's policy for the collection's threshold; a
    collection whose target puts it above the face's similarity leaves the track unknown."""
    enroll_people(client, collection)
    engine = client.app.state.streams.engine  # type: ignore[attr-defined]
    service = client.app.state.runtime.service  # type: ignore[attr-defined]
    applied = service.identification_threshold(collection, threshold=None, target_fpir=None)
    assert engine.collection_threshold(collection) == applied.threshold

    session = open_session(client, collection)
    first = session.process(bush_frames[0], 0)
    assert first.job is not None
    outcome = session.recognise(first.job)
    (recognition,) = outcome.recognitions
    assert recognition.observation.subject == BUSH_NAME
    similarity = recognition.observation.similarity

    strict = replace(engine, threshold_for=lambda _: min(1.0, similarity + 0.01))
    strict_session = strict.open_session(collection)
    job = strict_session.process(bush_frames[0], 0).job
    assert job is not None
    (unknown,) = strict_session.recognise(job).recognitions
    assert unknown.observation.subject is None
