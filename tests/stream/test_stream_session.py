"""A stream session on the real models: answers without recognition, results folded later."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.stream.session import StreamSession

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


def open_session(client: TestClient, collection: str) -> StreamSession:
    session: StreamSession = client.app.state.streams.engine.open_session(collection)  # type: ignore[attr-defined]
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
