"""POST /verify (two photos, or a photo and a subject) and POST /embed on the real models."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from conftest import Enroll, LfwPhoto

RUMSFELD = "Donald_Rumsfeld"
SCHROEDER = "Gerhard_Schroeder"


def file_of(photo: Path) -> tuple[str, bytes]:
    return photo.name, photo.read_bytes()


def verify(client: TestClient, collection: str = "default", **fields: Any) -> Any:
    """POST /verify: Path and (name, bytes) values are uploads, strings form fields."""
    uploads = {
        name: file_of(value) if isinstance(value, Path) else value
        for name, value in fields.items()
        if isinstance(value, Path | tuple)
    }
    form = {name: value for name, value in fields.items() if name not in uploads}
    return client.post("/verify", params={"collection": collection}, data=form, files=uploads)


@pytest.fixture(scope="module")
def default_threshold(client: TestClient) -> float:
    return float(client.get("/ready").json()["threshold"])


@pytest.fixture(scope="module")
def rumsfeld(client: TestClient, enroll: Enroll, lfw_photo: LfwPhoto) -> str:
    """A collection with Donald Rumsfeld enrolled from photo 0039."""
    collection = f"verify{uuid.uuid4().hex[:8]}"
    response = enroll(client, collection, "Rumsfeld", lfw_photo(RUMSFELD, 39))
    assert response.status_code == 201, response.text
    return collection


# --- two photos ---------------------------------------------------------------------------------


def test_two_photos_of_the_same_person_match(
    client: TestClient, lfw_photo: LfwPhoto, default_threshold: float
) -> None:
    response = verify(client, image_a=lfw_photo(RUMSFELD, 39), image_b=lfw_photo(RUMSFELD, 51))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["match"] is True
    assert body["similarity"] > body["threshold"] == default_threshold
    ready = client.get("/ready").json()
    assert body["model"] == {
        "detector": ready["detector"]["model_id"],
        "recognizer": ready["recognizer"]["model_id"],
    }


def test_photos_of_different_people_do_not_match(
    client: TestClient, lfw_photo: LfwPhoto, default_threshold: float
) -> None:
    response = verify(client, image_a=lfw_photo(RUMSFELD, 39), image_b=lfw_photo(SCHROEDER, 5))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["match"] is False
    assert body["similarity"] < default_threshold


def test_verify_is_symmetric(client: TestClient, lfw_photo: LfwPhoto) -> None:
    first, second = lfw_photo(RUMSFELD, 39), lfw_photo(RUMSFELD, 51)

    forward = verify(client, image_a=first, image_b=second).json()["similarity"]
    backward = verify(client, image_a=second, image_b=first).json()["similarity"]

    assert forward == pytest.approx(backward, abs=1e-5)


def test_a_threshold_override_decides_and_is_echoed(
    client: TestClient, lfw_photo: LfwPhoto
) -> None:
    response = verify(
        client, image_a=lfw_photo(RUMSFELD, 39), image_b=lfw_photo(RUMSFELD, 51), threshold="0.95"
    )

    assert response.status_code == 200, response.text
    assert response.json()["threshold"] == 0.95
    assert response.json()["match"] is False


# --- a photo and a subject ------------------------------------------------------------------


def test_a_photo_matches_its_enrolled_subject(
    client: TestClient, rumsfeld: str, lfw_photo: LfwPhoto, default_threshold: float
) -> None:
    response = verify(client, rumsfeld, image=lfw_photo(RUMSFELD, 51), subject="Rumsfeld")

    assert response.status_code == 200, response.text
    assert response.json()["match"] is True
    assert response.json()["similarity"] > default_threshold


def test_a_photo_of_someone_else_does_not_match_the_subject(
    client: TestClient, rumsfeld: str, lfw_photo: LfwPhoto
) -> None:
    response = verify(client, rumsfeld, image=lfw_photo(SCHROEDER, 5), subject="Rumsfeld")

    assert response.status_code == 200, response.text
    assert response.json()["match"] is False


def test_an_unknown_subject_is_not_found(
    client: TestClient, rumsfeld: str, lfw_photo: LfwPhoto
) -> None:
    response = verify(client, rumsfeld, image=lfw_photo(RUMSFELD, 51), subject="Nobody")

    assert response.status_code == 404
    assert response.json()["code"] == "subject_not_found"


def test_a_subject_of_another_collection_is_not_found(
    client: TestClient, rumsfeld: str, lfw_photo: LfwPhoto
) -> None:
    response = verify(client, f"{rumsfeld}x", image=lfw_photo(RUMSFELD, 51), subject="Rumsfeld")

    assert response.status_code == 404
    assert response.json()["code"] == "subject_not_found"


# --- several faces ----------------------------------------------------------------------------

GROUP = "face_recognition_obama_and_biden.jpg"  # 3 faces


def embeddings_of(client: TestClient, photo: Path) -> list[dict[str, Any]]:
    response = client.post("/embed", files={"image": file_of(photo)})
    assert response.status_code == 200, response.text
    return list(response.json()["faces"])


def largest(faces: list[dict[str, Any]]) -> np.ndarray:
    face = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
    return np.array(face["embedding"])


def test_verify_compares_the_largest_face_of_each_photo_with_several_faces(
    client: TestClient, photos: Path, lfw_photo: LfwPhoto
) -> None:
    group, single = photos / GROUP, lfw_photo(RUMSFELD, 39)
    faces = embeddings_of(client, group)
    assert len(faces) == 3
    expected = float(largest(faces) @ largest(embeddings_of(client, single)))
    # The other faces of the group photo would give other similarities.
    others = [
        float(np.array(f["embedding"]) @ largest(embeddings_of(client, single))) for f in faces
    ]
    assert len({round(value, 4) for value in others}) == 3

    forward = verify(client, image_a=group, image_b=single)
    backward = verify(client, image_a=single, image_b=group)

    assert forward.status_code == backward.status_code == 200
    assert forward.json()["similarity"] == pytest.approx(expected, abs=1e-5)
    assert backward.json()["similarity"] == pytest.approx(expected, abs=1e-5)
    assert verify(client, image_a=group, image_b=group).json()["similarity"] == pytest.approx(
        1.0, abs=1e-5
    )


@pytest.fixture(scope="module")
def rumsfeld_twice(client: TestClient, enroll: Enroll, lfw_photo: LfwPhoto) -> str:
    """A collection with Rumsfeld enrolled from two photos (two faces of one subject)."""
    collection = f"verify{uuid.uuid4().hex[:8]}"
    response = enroll(
        client, collection, "Rumsfeld", lfw_photo(RUMSFELD, 39), lfw_photo(RUMSFELD, 60)
    )
    assert response.status_code == 201, response.text
    assert len(response.json()["faces"]) == 2
    return collection


def test_verify_against_a_subject_with_several_faces_uses_the_closest(
    client: TestClient, rumsfeld_twice: str, lfw_photo: LfwPhoto
) -> None:
    probe = largest(embeddings_of(client, lfw_photo(RUMSFELD, 51)))
    per_face = [
        float(probe @ largest(embeddings_of(client, lfw_photo(RUMSFELD, number))))
        for number in (39, 60)
    ]
    assert abs(per_face[0] - per_face[1]) > 1e-3  # the two enrolled faces really differ

    response = verify(client, rumsfeld_twice, image=lfw_photo(RUMSFELD, 51), subject="Rumsfeld")

    assert response.status_code == 200, response.text
    assert response.json()["similarity"] == pytest.approx(max(per_face), abs=1e-5)
    assert response.json()["match"] is True


def test_verify_a_group_photo_against_a_subject_uses_its_largest_face(
    client: TestClient, rumsfeld_twice: str, photos: Path, lfw_photo: LfwPhoto
) -> None:
    group = largest(embeddings_of(client, photos / GROUP))
    expected = max(
        float(group @ largest(embeddings_of(client, lfw_photo(RUMSFELD, number))))
        for number in (39, 60)
    )

    response = verify(client, rumsfeld_twice, image=photos / GROUP, subject="Rumsfeld")

    assert response.status_code == 200, response.text
    assert response.json()["similarity"] == pytest.approx(expected, abs=1e-5)
    assert response.json()["match"] is False  # Rumsfeld is not in the photo


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"image_a": 1}, id="image_a-alone"),
        pytest.param({"image": 1}, id="image-without-subject"),
        pytest.param({"subject": "Rumsfeld"}, id="subject-without-image"),
        pytest.param({"image_a": 1, "image": 1}, id="image_a-and-image"),
        pytest.param({"image_a": 1, "image_b": 1, "subject": "Rumsfeld"}, id="pair-and-subject"),
        pytest.param({"image": 1, "image_b": 1, "subject": "Rumsfeld"}, id="image_b-and-subject"),
    ],
)
def test_other_field_combinations_are_invalid_requests(
    client: TestClient, rumsfeld: str, lfw_photo: LfwPhoto, fields: dict[str, object]
) -> None:
    photo = lfw_photo(RUMSFELD, 51)
    filled = {name: photo if value == 1 else value for name, value in fields.items()}

    response = verify(client, rumsfeld, **filled)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"


def test_a_subject_name_with_a_slash_is_an_invalid_request(
    client: TestClient, rumsfeld: str, lfw_photo: LfwPhoto
) -> None:
    response = verify(client, rumsfeld, image=lfw_photo(RUMSFELD, 51), subject="a/b")

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_a_photo_without_a_face_is_rejected_with_no_face(
    client: TestClient, rumsfeld: str, lfw_photo: LfwPhoto, grey_png: bytes
) -> None:
    pair = client.post(
        "/verify",
        files={"image_a": ("grey.png", grey_png), "image_b": file_of(lfw_photo(RUMSFELD, 51))},
    )
    against_subject = verify(client, rumsfeld, image=("grey.png", grey_png), subject="Rumsfeld")

    for response in (pair, against_subject):
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "no_face"


# --- embed --------------------------------------------------------------------------------------


def embed(client: TestClient, photo: Path) -> list[dict[str, Any]]:
    response = client.post("/embed", files={"image": file_of(photo)})
    assert response.status_code == 200, response.text
    faces: list[dict[str, Any]] = response.json()["faces"]
    return faces


def test_embed_returns_a_512d_unit_embedding_for_every_face(
    client: TestClient, photos: Path
) -> None:
    faces = embed(client, photos / "insightface_t1.jpg")

    assert len(faces) == 6
    for face in faces:
        embedding = np.asarray(face["embedding"])
        assert embedding.shape == (512,)
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)
        assert len(face["landmarks"]) == 5
        assert len(face["bbox"]) == 4
        assert 0.5 <= face["det_score"] <= 1.0
    # Six different people: no two embeddings are alike.
    matrix = np.asarray([face["embedding"] for face in faces])
    similarities = matrix @ matrix.T
    assert np.max(similarities - np.eye(6)) < 0.5


def test_embeddings_of_the_same_image_are_deterministic(client: TestClient, photos: Path) -> None:
    first = embed(client, photos / "face_recognition_obama_and_biden.jpg")
    second = embed(client, photos / "face_recognition_obama_and_biden.jpg")

    assert len(first) == len(second) == 3
    for a, b in zip(first, second, strict=True):
        assert a["bbox"] == b["bbox"]
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-6)


def test_embed_names_the_models(client: TestClient, lfw_photo: LfwPhoto) -> None:
    response = client.post("/embed", files={"image": file_of(lfw_photo(RUMSFELD, 39))})

    ready = client.get("/ready").json()
    assert response.json()["model"] == {
        "detector": ready["detector"]["model_id"],
        "recognizer": ready["recognizer"]["model_id"],
    }


def test_embed_of_a_photo_without_faces_is_an_empty_list(
    client: TestClient, grey_png: bytes
) -> None:
    response = client.post("/embed", files={"image": ("grey.png", grey_png)})

    assert response.status_code == 200, response.text
    assert response.json()["faces"] == []
