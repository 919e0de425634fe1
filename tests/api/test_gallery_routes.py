"""Gallery management over HTTP: list, look up and delete subjects and faces."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from conftest import Enroll, Identify, LfwPhoto

BUSH = "George_W_Bush"
RUMSFELD = "Donald_Rumsfeld"


def enrolled_face_ids(response: Any) -> list[str]:
    assert response.status_code == 201, response.text
    return [face["face_id"] for face in response.json()["faces"]]


def page(client: TestClient, collection: str, **query: int) -> dict[str, Any]:
    response = client.get("/subjects", params={"collection": collection, **query})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def names(listing: dict[str, Any]) -> list[str]:
    return [item["subject"] for item in listing["items"]]


def get_subject(client: TestClient, collection: str, subject: str) -> Any:
    return client.get(f"/subjects/{quote(subject, safe='')}", params={"collection": collection})


# --- listing ------------------------------------------------------------------------------------


def test_subjects_are_listed_by_name_one_page_at_a_time(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(RUMSFELD, 39)
    for subject in ("carol", "alice", "dave", "bob"):
        assert enroll(client, collection, subject, photo).status_code == 201

    first = page(client, collection, limit=2, offset=0)
    second = page(client, collection, limit=2, offset=2)
    past_the_end = page(client, collection, limit=2, offset=4)

    assert names(first) == ["alice", "bob"]
    assert names(second) == ["carol", "dave"]
    assert names(past_the_end) == []
    assert (first["total"], first["limit"], first["offset"]) == (4, 2, 0)
    assert (second["total"], second["limit"], second["offset"]) == (4, 2, 2)
    assert past_the_end["total"] == 4
    assert first["collection"] == collection
    item = first["items"][0]
    assert set(item) == {"subject", "face_count", "created_at", "updated_at"}
    assert item["face_count"] == 1


def test_an_empty_collection_lists_no_subjects(client: TestClient, collection: str) -> None:
    listing = page(client, collection)

    assert listing["items"] == []
    assert listing["total"] == 0


@pytest.mark.parametrize(
    "query",
    [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "many"}],
    ids=["limit-0", "limit-too-big", "negative-offset", "limit-not-a-number"],
)
def test_bad_page_parameters_are_invalid_requests(
    client: TestClient, collection: str, query: dict[str, object]
) -> None:
    response = client.get("/subjects", params={"collection": collection, **query})

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


# --- one subject -------------------------------------------------------------------------------


def test_a_subject_lists_its_enrolled_faces(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    face_ids = enrolled_face_ids(
        enroll(client, collection, "Bush", lfw_photo(BUSH, 7), lfw_photo(BUSH, 16))
    )
    recognizer = client.get("/ready").json()["recognizer"]["model_id"]

    response = get_subject(client, collection, "Bush")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subject"] == "Bush"
    assert body["collection"] == collection
    assert body["face_count"] == 2
    assert [face["face_id"] for face in body["faces"]] == face_ids
    for face in body["faces"]:
        assert face["model_id"] == recognizer
        assert len(face["image_sha256"]) == 64
        assert len(face["bbox"]) == 4


def test_a_unicode_name_is_found_through_its_url_encoded_path(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    name = "José Ñúñez 王小明"
    assert enroll(client, collection, name, lfw_photo(RUMSFELD, 39)).status_code == 201

    response = client.get(
        "/subjects/Jos%C3%A9%20%C3%91%C3%BA%C3%B1ez%20%E7%8E%8B%E5%B0%8F%E6%98%8E",
        params={"collection": collection},
    )

    assert response.status_code == 200, response.text
    assert response.json()["subject"] == name
    assert names(page(client, collection)) == [name]


def test_an_unknown_subject_is_not_found(client: TestClient, collection: str) -> None:
    response = get_subject(client, collection, "Nobody")

    assert response.status_code == 404
    assert response.json()["code"] == "subject_not_found"


def test_a_subject_of_another_collection_is_not_found(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    assert enroll(client, collection, "Bush", lfw_photo(BUSH, 7)).status_code == 201

    response = get_subject(client, f"{collection}x", "Bush")

    assert response.status_code == 404
    assert response.json()["code"] == "subject_not_found"


# --- deleting subjects ---------------------------------------------------------------------------


def test_a_deleted_subject_is_gone_and_no_longer_identified(
    client: TestClient, collection: str, enroll: Enroll, identify: Identify, lfw_photo: LfwPhoto
) -> None:
    enroll(client, collection, "Bush", lfw_photo(BUSH, 7), lfw_photo(BUSH, 16))
    enroll(client, collection, "Rumsfeld", lfw_photo(RUMSFELD, 39))
    probe = lfw_photo(BUSH, 65)
    before = identify(client, collection, probe).json()["faces"][0]
    assert before["match"]["subject"] == "Bush"

    response = client.delete("/subjects/Bush", params={"collection": collection})

    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "Bush", "deleted_faces": 2}
    assert get_subject(client, collection, "Bush").status_code == 404
    assert names(page(client, collection)) == ["Rumsfeld"]
    after = identify(client, collection, probe).json()["faces"][0]
    assert after["match"] is None
    assert [c["subject"] for c in after["candidates"]] == ["Rumsfeld"]


def test_deleting_an_unknown_subject_is_not_found(client: TestClient, collection: str) -> None:
    response = client.delete("/subjects/Nobody", params={"collection": collection})

    assert response.status_code == 404
    assert response.json()["code"] == "subject_not_found"


def test_a_deleted_subject_can_be_enrolled_again_from_the_same_photo(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(BUSH, 7)
    (old_id,) = enrolled_face_ids(enroll(client, collection, "Bush", photo))
    assert client.delete("/subjects/Bush", params={"collection": collection}).status_code == 200

    again = enroll(client, collection, "Bush", photo)

    assert again.status_code == 201, again.text
    (face,) = again.json()["faces"]
    assert face["created"] is True
    assert face["face_id"] != old_id


# --- deleting faces ----------------------------------------------------------------------------


def test_deleting_a_face_leaves_the_subject_its_other_faces(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    first, second = enrolled_face_ids(
        enroll(client, collection, "Bush", lfw_photo(BUSH, 7), lfw_photo(BUSH, 16))
    )

    response = client.delete(f"/faces/{first}", params={"collection": collection})

    assert response.status_code == 200, response.text
    assert response.json() == {"face_id": first, "subject": "Bush"}
    remaining = get_subject(client, collection, "Bush").json()
    assert remaining["face_count"] == 1
    assert [face["face_id"] for face in remaining["faces"]] == [second]


def test_deleting_the_last_face_deletes_the_subject(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    (face_id,) = enrolled_face_ids(enroll(client, collection, "Bush", lfw_photo(BUSH, 7)))

    assert client.delete(f"/faces/{face_id}", params={"collection": collection}).status_code == 200

    assert get_subject(client, collection, "Bush").status_code == 404
    assert page(client, collection)["total"] == 0


def test_deleting_an_unknown_face_is_not_found(client: TestClient, collection: str) -> None:
    response = client.delete("/faces/0123456789abcdef", params={"collection": collection})

    assert response.status_code == 404
    assert response.json()["code"] == "face_not_found"


def test_a_face_cannot_be_deleted_through_another_collection(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    (face_id,) = enrolled_face_ids(enroll(client, collection, "Bush", lfw_photo(BUSH, 7)))

    response = client.delete(f"/faces/{face_id}", params={"collection": f"{collection}x"})

    assert response.status_code == 404
    assert response.json()["code"] == "face_not_found"
    assert get_subject(client, collection, "Bush").json()["face_count"] == 1
