"""Enrollment's checks beyond one face per photo: the quality gate, the warning for a face
that already matches another subject (refused in strict mode), and the stored crops."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

if TYPE_CHECKING:
    from conftest import ClientFactory, Enroll, LfwPhoto

BUSH = ("George_W_Bush", 7)
BUSH_AGAIN = ("George_W_Bush", 16)
RUMSFELD = ("Donald_Rumsfeld", 39)


def blurred(photo: bytes, sigma: float = 3.0) -> bytes:
    with Image.open(io.BytesIO(photo)) as image:
        out = io.BytesIO()
        image.convert("RGB").filter(ImageFilter.GaussianBlur(sigma)).save(out, format="JPEG")
        return out.getvalue()


def test_a_blurred_photo_is_rejected_for_its_quality_with_reasons(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    response = enroll(
        client, collection, "Bush", ("blur.jpg", blurred(lfw_photo(*BUSH).read_bytes()))
    )

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "low_quality"
    assert "blurry" in body["details"]["reasons"]
    assert body["details"]["quality"] < body["details"]["min_quality"]


def test_the_quality_gate_is_a_setting(
    build_client: ClientFactory, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    lenient = build_client(min_quality=0.0)

    response = enroll(
        lenient, collection, "Bush", ("blur.jpg", blurred(lfw_photo(*BUSH).read_bytes()))
    )

    assert response.status_code == 201, response.text
    assert "blurry" in response.json()["faces"][0]["quality"]["reasons"]


def test_identify_and_embed_report_each_faces_quality(
    client: TestClient, collection: str, photos: object, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(*RUMSFELD).read_bytes()

    identified = client.post(
        "/identify", params={"collection": collection}, files={"image": ("r.jpg", photo)}
    ).json()
    embedded = client.post("/embed", files={"image": ("r.jpg", photo)}).json()

    for face in (identified["faces"][0], embedded["faces"][0]):
        quality = face["quality"]
        assert 0 <= quality["score"] <= 1
        assert set(quality) == {"score", "size", "sharpness", "pose", "det_score", "reasons"}
        assert quality["det_score"] == face["det_score"]
    assert identified["faces"][0]["quality"] == embedded["faces"][0]["quality"]


def test_a_face_matching_another_subject_is_enrolled_with_a_warning(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    first = enroll(client, collection, "Bush", lfw_photo(*BUSH))
    second = enroll(client, collection, "Someone else", lfw_photo(*BUSH_AGAIN))
    unrelated = enroll(client, collection, "Rumsfeld", lfw_photo(*RUMSFELD))

    assert first.status_code == second.status_code == unrelated.status_code == 201
    assert first.json()["warnings"] == []
    (warning,) = second.json()["warnings"]
    assert warning["code"] == "matches_other_subject"
    assert warning["subject"] == "Bush"
    assert warning["image"] == lfw_photo(*BUSH_AGAIN).name
    assert warning["face_id"] == first.json()["faces"][0]["face_id"]
    assert warning["similarity"] >= client.get("/ready").json()["threshold"]
    assert unrelated.json()["warnings"] == []


def test_strict_enrollment_refuses_a_face_of_another_subject_and_enrolls_nothing(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    enroll(client, collection, "Bush", lfw_photo(*BUSH))

    refused = enroll(
        client, collection, "Impostor", lfw_photo(*RUMSFELD), lfw_photo(*BUSH_AGAIN), strict="true"
    )
    same_subject = enroll(client, collection, "Bush", lfw_photo(*BUSH_AGAIN), strict="true")

    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "matches_other_subject"
    assert [m["subject"] for m in body["details"]["matches"]] == ["Bush"]
    assert client.get(f"/subjects/Impostor?collection={collection}").status_code == 404
    assert same_subject.status_code == 201, same_subject.text


def test_a_faces_crop_is_its_stored_112px_aligned_face(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    face_id = enroll(client, collection, "Bush", lfw_photo(*BUSH)).json()["faces"][0]["face_id"]

    crop = client.get(f"/faces/{face_id}/crop", params={"collection": collection})
    elsewhere = client.get(f"/faces/{face_id}/crop", params={"collection": collection + "x"})

    assert crop.status_code == 200
    assert crop.headers["content-type"] == "image/png"
    assert "no-store" in crop.headers["cache-control"]
    with Image.open(io.BytesIO(crop.content)) as image:
        assert image.size == (112, 112)
    assert (elsewhere.status_code, elsewhere.json()["code"]) == (404, "face_not_found")


def test_with_crops_off_there_is_no_crop_to_show(
    build_client: ClientFactory, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    no_crops = build_client(store_aligned_crops=False)
    face_id = enroll(no_crops, collection, "Bush", lfw_photo(*BUSH)).json()["faces"][0]["face_id"]

    response = no_crops.get(f"/faces/{face_id}/crop", params={"collection": collection})

    assert (response.status_code, response.json()["code"]) == (404, "crop_not_found")


def test_collections_lists_those_holding_faces_with_auth_off(
    build_client: ClientFactory, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    fresh = build_client()
    enroll(fresh, "staff", "Bush", lfw_photo(*BUSH))
    enroll(fresh, "visitors", "Rumsfeld", lfw_photo(*RUMSFELD))

    response = fresh.get("/collections")

    assert response.status_code == 200
    assert response.json() == {
        "items": [{"name": "staff", "faces": 1}, {"name": "visitors", "faces": 1}],
        "all_collections": True,
    }


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_strict_must_be_a_boolean(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto, value: str
) -> None:
    response = enroll(client, collection, "Bush", lfw_photo(*BUSH), strict=value)

    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
