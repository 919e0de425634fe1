"""Images as JSON: every image endpoint takes base64 images under the form's field names,
with the same results, limits and error codes as multipart uploads."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from conftest import ClientFactory, LfwPhoto

BUSH = ("George_W_Bush", 7)
BUSH_AGAIN = ("George_W_Bush", 16)
RUMSFELD = ("Donald_Rumsfeld", 39)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_identify_as_json_answers_exactly_what_the_form_answers(
    client: TestClient, collection: str, lfw_photo: LfwPhoto
) -> None:
    enrolled = client.post(
        "/enroll",
        params={"collection": collection},
        json={"subject": "Bush", "images": [b64(lfw_photo(*BUSH).read_bytes())]},
    )
    photo = lfw_photo(*BUSH_AGAIN).read_bytes()

    as_form = client.post(
        "/identify", params={"collection": collection}, files={"image": ("b.jpg", photo)}
    )
    as_json = client.post(
        "/identify", params={"collection": collection}, json={"image": b64(photo), "top_k": 1}
    )

    assert enrolled.status_code == 201, enrolled.text
    assert as_form.status_code == as_json.status_code == 200
    assert as_json.json() == as_form.json()
    assert as_json.json()["faces"][0]["match"]["subject"] == "Bush"


def test_enroll_as_json_takes_data_urls_and_names_photos_by_position(
    client: TestClient, collection: str, lfw_photo: LfwPhoto, grey_png: bytes
) -> None:
    images = [
        "data:image/jpeg;base64," + b64(lfw_photo(*BUSH).read_bytes()),
        b64(grey_png),
        b64(lfw_photo(*BUSH_AGAIN).read_bytes()),
    ]

    response = client.post(
        "/enroll", params={"collection": collection}, json={"subject": "Bush", "images": images}
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["faces"]) == 2
    assert [(r["image"], r["code"]) for r in body["rejected"]] == [("images[1]", "no_face")]


def test_verify_as_json_takes_either_field_set(
    client: TestClient, collection: str, lfw_photo: LfwPhoto
) -> None:
    first, second = (b64(lfw_photo(*photo).read_bytes()) for photo in (BUSH, BUSH_AGAIN))
    client.post(
        "/enroll", params={"collection": collection}, json={"subject": "Bush", "images": [first]}
    )

    pair = client.post("/verify", json={"image_a": first, "image_b": second})
    against = client.post(
        "/verify", params={"collection": collection}, json={"image": second, "subject": "Bush"}
    )
    both = client.post("/verify", json={"image_a": first, "image_b": second, "subject": "Bush"})

    assert pair.status_code == against.status_code == 200
    assert pair.json()["match"] is True
    assert against.json()["match"] is True
    assert both.status_code == 422
    assert both.json()["code"] == "invalid_request"


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_verify_says_which_photo_has_no_face(
    client: TestClient, lfw_photo: LfwPhoto, grey_png: bytes, as_json: bool
) -> None:
    face = lfw_photo(*BUSH).read_bytes()
    if as_json:
        response = client.post("/verify", json={"image_a": b64(face), "image_b": b64(grey_png)})
    else:
        response = client.post(
            "/verify", files={"image_a": ("a.jpg", face), "image_b": ("b.png", grey_png)}
        )

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "no_face"
    assert "image_b" in body["message"]
    assert body["details"]["field"] == "image_b"


def test_embed_as_json_returns_the_forms_embeddings(
    client: TestClient, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(*RUMSFELD).read_bytes()

    as_form = client.post("/embed", files={"image": ("r.jpg", photo)}).json()
    as_json = client.post("/embed", json={"image": b64(photo)}).json()

    assert as_json == as_form
    assert len(as_json["faces"][0]["embedding"]) == 512


JSON_MISTAKES = {
    "not-base64": ({"image": "this is not base64!"}, 422, "invalid_request"),
    "not-a-string": ({"image": 42}, 422, "invalid_request"),
    "unknown-field": ({"image": "", "topk": 3}, 422, "invalid_request"),
    "bad-top-k": ({"image": "", "top_k": 0}, 422, "invalid_request"),
    "no-image": ({"top_k": 3}, 422, "invalid_request"),
    "a-list": ([1, 2], 422, "invalid_request"),
    "not-an-image": ({"image": b64(b"# README\nthis is text")}, 415, "unsupported_media_type"),
    "empty-image": ({"image": ""}, 400, "undecodable_image"),
}


@pytest.mark.parametrize(
    ("body", "status", "code"), JSON_MISTAKES.values(), ids=JSON_MISTAKES.keys()
)
def test_json_mistakes_get_the_services_errors(
    client: TestClient, body: object, status: int, code: str
) -> None:
    response = client.post("/identify", content=json.dumps(body).encode(), headers=JSON_HEADERS)

    assert (response.status_code, response.json()["code"]) == (status, code), response.text


JSON_HEADERS = {"content-type": "application/json"}


def test_broken_json_and_other_content_types_are_refused(client: TestClient) -> None:
    broken = client.post("/identify", content=b'{"image": ', headers=JSON_HEADERS)
    text = client.post("/identify", content=b"hello", headers={"content-type": "text/plain"})

    assert (broken.status_code, broken.json()["code"]) == (400, "malformed_request")
    assert (text.status_code, text.json()["code"]) == (415, "unsupported_media_type")
    assert "application/json" in text.json()["message"]


def test_images_list_must_be_a_list_within_the_limit(
    build_client: ClientFactory, lfw_photo: LfwPhoto
) -> None:
    limited = build_client(max_images_per_enroll=2)
    photo = b64(lfw_photo(*BUSH).read_bytes())

    not_a_list = limited.post("/enroll", json={"subject": "B", "images": photo})
    too_many = limited.post("/enroll", json={"subject": "B", "images": [photo] * 3})

    assert (not_a_list.status_code, not_a_list.json()["code"]) == (422, "invalid_request")
    assert (too_many.status_code, too_many.json()["code"]) == (422, "invalid_request")
    assert too_many.json()["details"]["limit"] == 2


def test_limits_apply_to_the_decoded_image_and_to_the_whole_body(
    build_client: ClientFactory, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(*BUSH).read_bytes()
    limited = build_client(max_image_bytes=len(photo) - 1, max_request_bytes=4 * len(photo))

    decoded_too_large = limited.post("/embed", json={"image": b64(photo)})
    body_too_large = limited.post("/embed", json={"image": b64(photo) * 4})
    just_fits = build_client(max_image_bytes=len(photo)).post("/embed", json={"image": b64(photo)})

    assert (decoded_too_large.status_code, decoded_too_large.json()["code"]) == (
        413,
        "image_too_large",
    )
    assert (body_too_large.status_code, body_too_large.json()["code"]) == (
        413,
        "request_too_large",
    )
    assert just_fits.status_code == 200, just_fits.text
