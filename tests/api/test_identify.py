"""POST /identify on the real models and real photos: who is who, unknowns, group photos,
one subject per photo, top_k and threshold, collections, and close-up faces."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

if TYPE_CHECKING:
    from conftest import Enroll, Identify, LfwPhoto

# (subject, LFW person, photo enrolled, a different photo of them to identify)
PEOPLE = [
    ("George W. Bush", "George_W_Bush", 7, 16),
    ("Donald Rumsfeld", "Donald_Rumsfeld", 39, 51),
    ("Gerhard Schröder", "Gerhard_Schroeder", 5, 25),
]
NEVER_ENROLLED = ("Jacques_Chirac", 2)
# Face counts every detector agrees on (shared/README.md).
GROUP_PHOTOS = {
    "deepface_couple.jpg": 2,
    "deepface_selfie-many-people.jpg": 6,
    "face_recognition_two_people.jpg": 2,
    "face_recognition_obama_and_biden.jpg": 3,
    "face_recognition_kit_with_rose.jpg": 2,
    "insightface_t1.jpg": 6,
    "insightface_Tom_Hanks_54745.png": 1,
}
CLOSE_UP_SIDE = 600


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def only_face(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    assert len(faces) == 1, faces
    face: dict[str, Any] = faces[0]
    return face


@pytest.fixture(scope="module")
def people(client: TestClient, enroll: Enroll, lfw_photo: LfwPhoto) -> str:
    """A collection with the three PEOPLE enrolled from one photo each."""
    collection = f"people{uuid.uuid4().hex[:8]}"
    for subject, person, enrolled, _ in PEOPLE:
        response = enroll(client, collection, subject, lfw_photo(person, enrolled))
        assert response.status_code == 201, response.text
    return collection


@pytest.fixture(scope="module")
def default_threshold(client: TestClient) -> float:
    return float(client.get("/ready").json()["threshold"])


# --- who is who -----------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "person", "probe"), [(s, p, n) for s, p, _, n in PEOPLE])
def test_identify_recognises_an_enrolled_person_in_a_different_photo(
    client: TestClient,
    people: str,
    identify: Identify,
    lfw_photo: LfwPhoto,
    default_threshold: float,
    subject: str,
    person: str,
    probe: int,
) -> None:
    face = only_face(identify(client, people, lfw_photo(person, probe)))

    assert face["match"] is not None
    assert face["match"]["subject"] == subject
    assert face["match"]["similarity"] >= default_threshold
    assert face["candidates"][0] == face["match"]
    similarities = [c["similarity"] for c in face["candidates"]]
    assert similarities == sorted(similarities, reverse=True)
    assert {c["subject"] for c in face["candidates"]} == {s for s, *_ in PEOPLE}


def test_identify_the_enrollment_photo_itself_is_a_near_perfect_match(
    client: TestClient, people: str, identify: Identify, lfw_photo: LfwPhoto
) -> None:
    subject, person, enrolled, _ = PEOPLE[0]

    face = only_face(identify(client, people, lfw_photo(person, enrolled)))

    assert face["match"]["subject"] == subject
    assert face["match"]["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_a_person_never_enrolled_is_unknown_but_candidates_are_listed(
    client: TestClient,
    people: str,
    identify: Identify,
    lfw_photo: LfwPhoto,
    default_threshold: float,
) -> None:
    face = only_face(identify(client, people, lfw_photo(*NEVER_ENROLLED)))

    assert face["match"] is None
    assert len(face["candidates"]) == len(PEOPLE)
    assert all(c["similarity"] < default_threshold for c in face["candidates"])


# --- group photos ---------------------------------------------------------------------------


@pytest.mark.parametrize(("photo", "count"), GROUP_PHOTOS.items())
def test_identify_reports_every_face_with_box_landmarks_and_score(
    client: TestClient, collection: str, identify: Identify, photos: Path, photo: str, count: int
) -> None:
    response = identify(client, collection, photos / photo)

    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    assert len(faces) == count
    for face in faces:
        x1, y1, x2, y2 = face["bbox"]
        assert x1 < x2
        assert y1 < y2
        assert 0.5 <= face["det_score"] <= 1.0
        assert len(face["landmarks"]) == 5
        width, height = x2 - x1, y2 - y1
        for x, y in face["landmarks"]:
            assert x1 - 0.25 * width <= x <= x2 + 0.25 * width
            assert y1 - 0.25 * height <= y <= y2 + 0.25 * height
        # Nobody is enrolled in a fresh collection.
        assert face["candidates"] == []
        assert face["match"] is None


def test_one_subject_is_never_matched_to_two_faces_of_the_same_photo(
    client: TestClient, collection: str, enroll: Enroll, identify: Identify, photos: Path
) -> None:
    group = photos / "insightface_t1.jpg"
    enrolled = enroll(client, collection, "Someone", group, face_policy="largest")
    assert enrolled.status_code == 201, enrolled.text
    enrolled_box = enrolled.json()["faces"][0]["bbox"]

    # Threshold -1: the subject is an acceptable match for all six faces.
    response = identify(client, collection, group, threshold="-1")

    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    assert len(faces) == 6
    assert all(face["candidates"][0]["subject"] == "Someone" for face in faces)
    matched = [face for face in faces if face["match"] is not None]
    assert len(matched) == 1
    assert matched[0]["bbox"] == pytest.approx(enrolled_box, abs=0.5)
    assert matched[0]["match"]["similarity"] == pytest.approx(1.0, abs=1e-3)


# --- top_k, threshold, models, collections, empty photos -----------------------------------------


@pytest.mark.parametrize("top_k", [1, 2])
def test_top_k_limits_the_candidates_per_face(
    client: TestClient, people: str, identify: Identify, lfw_photo: LfwPhoto, top_k: int
) -> None:
    _, person, _, probe = PEOPLE[1]

    face = only_face(identify(client, people, lfw_photo(person, probe), top_k=str(top_k)))

    assert len(face["candidates"]) == top_k


def test_threshold_minus_one_matches_every_face_that_has_a_free_candidate(
    client: TestClient, people: str, identify: Identify, photos: Path
) -> None:
    response = identify(
        client, people, photos / "face_recognition_two_people.jpg", threshold="-1", top_k="3"
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["threshold"] == -1
    matches = [face["match"] for face in body["faces"]]
    assert len(matches) == 2
    assert all(match is not None for match in matches)
    assert len({match["subject"] for match in matches}) == 2


def test_a_high_threshold_turns_a_known_face_into_unknown_and_is_echoed(
    client: TestClient, people: str, identify: Identify, lfw_photo: LfwPhoto
) -> None:
    _, person, _, probe = PEOPLE[0]
    response = identify(client, people, lfw_photo(person, probe), threshold="0.99")

    face = only_face(response)
    assert face["match"] is None
    assert face["candidates"]
    assert response.json()["threshold"] == 0.99


def test_the_default_threshold_is_the_one_ready_reports(
    client: TestClient,
    people: str,
    identify: Identify,
    lfw_photo: LfwPhoto,
    default_threshold: float,
) -> None:
    response = identify(client, people, lfw_photo(*NEVER_ENROLLED))

    assert response.status_code == 200
    assert response.json()["threshold"] == default_threshold


def test_identify_names_the_models_it_used(
    client: TestClient, people: str, identify: Identify, lfw_photo: LfwPhoto
) -> None:
    ready = client.get("/ready").json()

    response = identify(client, people, lfw_photo(*NEVER_ENROLLED))

    assert response.json()["collection"] == people
    assert response.json()["model"] == {
        "detector": ready["detector"]["model_id"],
        "recognizer": ready["recognizer"]["model_id"],
    }


def test_collections_are_isolated(
    client: TestClient, collection: str, enroll: Enroll, identify: Identify, lfw_photo: LfwPhoto
) -> None:
    _, person, enrolled, probe = PEOPLE[0]
    other = f"{collection}b"
    assert enroll(client, collection, "Bush", lfw_photo(person, enrolled)).status_code == 201

    face = only_face(identify(client, other, lfw_photo(person, probe)))

    assert face["candidates"] == []
    assert face["match"] is None


def test_a_photo_without_faces_gives_an_empty_face_list(
    client: TestClient, people: str, identify: Identify, grey_png: bytes
) -> None:
    response = identify(client, people, ("grey.png", grey_png))

    assert response.status_code == 200, response.text
    assert response.json()["faces"] == []


# --- close-ups: the face fills the frame ----------------------------------------------------------


@pytest.fixture(scope="module")
def close_up_png(client: TestClient, lfw_photo: LfwPhoto) -> bytes:
    """George_W_Bush_0065 cropped to its face box and upscaled to 600x600."""
    photo = lfw_photo("George_W_Bush", 65)
    box = only_face(client.post("/embed", files={"image": (photo.name, photo.read_bytes())}))
    with Image.open(photo) as source:
        crop = source.convert("RGB").crop(tuple(round(v) for v in box["bbox"]))
    return encode_png(crop.resize((CLOSE_UP_SIDE, CLOSE_UP_SIDE), Image.Resampling.BICUBIC))


def test_a_face_filling_the_frame_is_detected_and_identified(
    client: TestClient, people: str, identify: Identify, close_up_png: bytes
) -> None:
    face = only_face(identify(client, people, ("close-up.png", close_up_png)))

    x1, _, x2, _ = face["bbox"]
    assert x2 - x1 > 0.75 * CLOSE_UP_SIDE
    assert face["match"] is not None
    assert face["match"]["subject"] == "George W. Bush"


def test_a_face_filling_the_frame_verifies_against_another_photo(
    client: TestClient, close_up_png: bytes, lfw_photo: LfwPhoto
) -> None:
    other = lfw_photo("George_W_Bush", 7)

    response = client.post(
        "/verify",
        files={
            "image_a": ("close-up.png", close_up_png),
            "image_b": (other.name, other.read_bytes()),
        },
    )

    assert response.status_code == 200, response.text
    assert response.json()["match"] is True


@pytest.fixture(scope="module")
def hanks(client: TestClient, enroll: Enroll, lfw_photo: LfwPhoto) -> str:
    """A collection with Tom Hanks enrolled from an LFW photo."""
    collection = f"hanks{uuid.uuid4().hex[:8]}"
    response = enroll(client, collection, "Tom Hanks", lfw_photo("Tom_Hanks", 6))
    assert response.status_code == 201, response.text
    return collection


def test_the_112px_aligned_crop_is_detected_and_identified(
    client: TestClient, hanks: str, identify: Identify, photos: Path
) -> None:
    face = only_face(identify(client, hanks, photos / "insightface_Tom_Hanks_54745.png"))

    assert face["match"] is not None
    assert face["match"]["subject"] == "Tom Hanks"


def test_the_112px_aligned_crop_verifies_against_the_subject(
    client: TestClient, hanks: str, photos: Path
) -> None:
    crop = photos / "insightface_Tom_Hanks_54745.png"

    response = client.post(
        "/verify",
        params={"collection": hanks},
        data={"subject": "Tom Hanks"},
        files={"image": (crop.name, crop.read_bytes())},
    )

    assert response.status_code == 200, response.text
    assert response.json()["match"] is True
