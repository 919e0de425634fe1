"""POST /enroll on the real models: response shape, idempotence, face policies, quality
gates and subject names."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

if TYPE_CHECKING:
    from conftest import ClientFactory, Enroll, LfwPhoto

# The detector finds exactly one face in each of these LFW photos.
BUSH = ("George_W_Bush", (7, 16, 65))
RUMSFELD = ("Donald_Rumsfeld", 39)
COUPLE = "deepface_couple.jpg"  # 2 faces
TINY_FACE_SIDE = 40  # px the whole 250x250 LFW photo is shrunk to: its face is ~17x21 px


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_face_png(photo: Path) -> bytes:
    """An LFW photo shrunk to TINY_FACE_SIDE px and pasted on a grey canvas."""
    canvas = Image.new("RGB", (256, 256), (128, 128, 128))
    with Image.open(photo) as source:
        canvas.paste(source.convert("RGB").resize((TINY_FACE_SIDE, TINY_FACE_SIDE)), (100, 100))
    return encode_png(canvas)


def subject_detail(client: TestClient, collection: str, subject: str) -> dict[str, object]:
    response = client.get(f"/subjects/{quote(subject, safe='')}", params={"collection": collection})
    assert response.status_code == 200, response.text
    return response.json()


def subject_total(client: TestClient, collection: str) -> int:
    response = client.get("/subjects", params={"collection": collection})
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


@pytest.fixture(scope="module")
def strict_client(build_client: ClientFactory) -> TestClient:
    """An app whose gates are stricter than any LFW face passes, and 2 images per request."""
    return build_client(min_det_score=0.95, max_images_per_enroll=2)


# --- success and shape ------------------------------------------------------------------


def test_enroll_returns_201_with_the_enrolled_face(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(*RUMSFELD)

    response = enroll(client, collection, "Donald Rumsfeld", photo)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["collection"] == collection
    assert body["subject"] == "Donald Rumsfeld"
    assert body["rejected"] == []
    (face,) = body["faces"]
    assert set(face) == {"face_id", "image_sha256", "bbox", "det_score", "created", "quality"}
    assert face["created"] is True
    assert isinstance(face["face_id"], str)
    assert face["face_id"]
    assert face["image_sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    x1, y1, x2, y2 = face["bbox"]
    assert 0 <= x1 < x2 <= 250
    assert 0 <= y1 < y2 <= 250
    assert 0.6 <= face["det_score"] <= 1.0


def test_enroll_takes_one_face_from_each_of_several_images(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    name, numbers = BUSH
    photos = [lfw_photo(name, number) for number in numbers]

    response = enroll(client, collection, "George W. Bush", *photos)

    assert response.status_code == 201, response.text
    faces = response.json()["faces"]
    assert [face["created"] for face in faces] == [True, True, True]
    assert [face["image_sha256"] for face in faces] == [
        hashlib.sha256(photo.read_bytes()).hexdigest() for photo in photos
    ]
    assert len({face["face_id"] for face in faces}) == 3
    detail = subject_detail(client, collection, "George W. Bush")
    assert detail["face_count"] == 3


def test_reenrolling_the_same_image_is_idempotent(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(*RUMSFELD)
    first = enroll(client, collection, "Rumsfeld", photo).json()["faces"][0]

    again = enroll(client, collection, "Rumsfeld", photo)

    assert again.status_code == 201, again.text
    (face,) = again.json()["faces"]
    assert face["face_id"] == first["face_id"]
    assert face["created"] is False
    assert subject_detail(client, collection, "Rumsfeld")["face_count"] == 1
    assert client.get("/ready").json()["collections"][collection] == 1


def test_the_same_image_twice_in_one_request_is_stored_once(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo(*RUMSFELD)

    response = enroll(client, collection, "Rumsfeld", photo, ("copy.jpg", photo.read_bytes()))

    assert response.status_code == 201, response.text
    first, second = response.json()["faces"]
    assert (first["created"], second["created"]) == (True, False)
    assert first["face_id"] == second["face_id"]
    assert subject_detail(client, collection, "Rumsfeld")["face_count"] == 1


# --- face policies ------------------------------------------------------------------------


def test_single_policy_rejects_a_multi_face_photo_when_it_is_the_only_image(
    client: TestClient, collection: str, enroll: Enroll, photos: Path
) -> None:
    response = enroll(client, collection, "Couple", photos / COUPLE, face_policy="single")

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "multiple_faces"
    assert body["details"]["faces"] == 2
    assert [(r["image"], r["code"]) for r in body["details"]["rejected"]] == [
        (COUPLE, "multiple_faces")
    ]
    assert subject_total(client, collection) == 0


def test_single_is_the_default_face_policy(
    client: TestClient, collection: str, enroll: Enroll, photos: Path
) -> None:
    response = enroll(client, collection, "Couple", photos / COUPLE)

    assert response.status_code == 422
    assert response.json()["code"] == "multiple_faces"


def test_single_policy_lists_a_multi_face_photo_in_rejected_when_another_image_succeeds(
    client: TestClient, collection: str, enroll: Enroll, photos: Path, lfw_photo: LfwPhoto
) -> None:
    response = enroll(client, collection, "Rumsfeld", photos / COUPLE, lfw_photo(*RUMSFELD))

    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["faces"]) == 1
    (rejected,) = body["rejected"]
    assert rejected["image"] == COUPLE
    assert rejected["code"] == "multiple_faces"
    assert rejected["message"]
    assert subject_detail(client, collection, "Rumsfeld")["face_count"] == 1


def test_largest_policy_enrolls_the_largest_face(
    client: TestClient, collection: str, enroll: Enroll, photos: Path
) -> None:
    detected = client.post("/embed", files={"image": (COUPLE, (photos / COUPLE).read_bytes())})
    boxes = [face["bbox"] for face in detected.json()["faces"]]
    assert len(boxes) == 2
    largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))

    response = enroll(client, collection, "Couple", photos / COUPLE, face_policy="largest")

    assert response.status_code == 201, response.text
    (face,) = response.json()["faces"]
    assert face["bbox"] == pytest.approx(largest, abs=0.5)


def test_an_unknown_face_policy_is_an_invalid_request(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    response = enroll(client, collection, "Rumsfeld", lfw_photo(*RUMSFELD), face_policy="all")

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


# --- quality gates and unusable images -------------------------------------------------------


def test_a_face_smaller_than_min_face_size_is_rejected(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    image = tiny_face_png(lfw_photo(*RUMSFELD))
    # The detector does see the face: the gate, not the detector, refuses it.
    detected = client.post("/embed", files={"image": ("tiny.png", image)}).json()["faces"]
    assert len(detected) == 1

    response = enroll(client, collection, "Tiny", ("tiny.png", image))

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "face_too_small"
    assert body["details"]["size"] < 32  # Settings.min_face_size
    assert subject_total(client, collection) == 0


def test_a_face_below_min_det_score_is_rejected(
    strict_client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    response = enroll(strict_client, collection, "Rumsfeld", lfw_photo(*RUMSFELD))

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "low_det_score"
    assert body["details"]["det_score"] < 0.95


def test_a_photo_without_a_face_is_rejected_with_no_face(
    client: TestClient, collection: str, enroll: Enroll, grey_png: bytes
) -> None:
    response = enroll(client, collection, "Nobody", ("grey.png", grey_png))

    assert response.status_code == 422
    assert response.json()["code"] == "no_face"


def test_each_unusable_image_is_listed_with_its_own_code(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto, grey_png: bytes
) -> None:
    response = enroll(
        client,
        collection,
        "Rumsfeld",
        ("grey.png", grey_png),
        lfw_photo(*RUMSFELD),
        ("junk.jpg", b"definitely not an image"),
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["faces"]) == 1
    assert [(r["image"], r["code"]) for r in body["rejected"]] == [
        ("grey.png", "no_face"),
        ("junk.jpg", "unsupported_media_type"),
    ]


def test_more_images_than_max_images_per_enroll_is_an_invalid_request(
    strict_client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    name, numbers = BUSH
    response = enroll(
        strict_client, collection, "Bush", *(lfw_photo(name, number) for number in numbers)
    )

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


# --- subject names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["José Ñúñez", "王小明", "Zoë O'Brien-Smith Jr.", "50% sure? #1 & more"]
)
def test_any_printable_name_can_be_enrolled_and_looked_up(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto, name: str
) -> None:
    response = enroll(client, collection, name, lfw_photo(*RUMSFELD))

    assert response.status_code == 201, response.text
    assert response.json()["subject"] == name
    assert subject_detail(client, collection, name)["subject"] == name


def test_surrounding_whitespace_is_trimmed_from_names(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    response = enroll(client, collection, "  Ada Lovelace \t", lfw_photo(*RUMSFELD))

    assert response.status_code == 201, response.text
    assert response.json()["subject"] == "Ada Lovelace"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("a/b", id="slash"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("tab\there", id="tab"),
        pytest.param("line\nbreak", id="newline"),
        pytest.param("nul\x00byte", id="nul"),
        pytest.param("escape\x1b[31m", id="esc"),
        pytest.param("del\x7f", id="del"),
        pytest.param("..", id="dotdot"),
        pytest.param("x" * 129, id="too-long"),
    ],
)
def test_unaddressable_names_are_invalid_requests(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto, name: str
) -> None:
    response = enroll(client, collection, name, lfw_photo(*RUMSFELD))

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert subject_total(client, collection) == 0


@pytest.mark.parametrize(
    "name",
    [pytest.param("next\x85line", id="NEL"), pytest.param("csi\x9b31m", id="CSI")],
)
def test_c1_control_characters_are_invalid_in_names(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto, name: str
) -> None:
    response = enroll(client, collection, name, lfw_photo(*RUMSFELD))

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"


# --- every photo unusable, the face cap, stored crops ------------------------------------------


def test_an_enroll_where_every_photo_is_unusable_is_refused_listing_each_and_stores_nothing(
    client: TestClient, collection: str, enroll: Enroll, photos: Path, grey_png: bytes
) -> None:
    response = enroll(
        client,
        collection,
        "Nobody",
        ("grey.png", grey_png),
        ("junk.jpg", b"definitely not an image"),
        photos / COUPLE,
        face_policy="single",
    )

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "no_face"  # the first photo's reason
    assert [(r["image"], r["code"]) for r in body["details"]["rejected"]] == [
        ("grey.png", "no_face"),
        ("junk.jpg", "unsupported_media_type"),
        (COUPLE, "multiple_faces"),
    ]
    assert all(r["message"] for r in body["details"]["rejected"])
    assert subject_total(client, collection) == 0
    missing = client.get("/subjects/Nobody", params={"collection": collection})
    assert missing.status_code == 404
    assert client.get("/ready").json()["collections"].get(collection, 0) == 0


@pytest.fixture(scope="module")
def one_face_client(build_client: ClientFactory) -> TestClient:
    """An app that processes only the largest face of each photo."""
    return build_client(max_faces_per_image=1)


def test_the_single_policy_still_refuses_a_group_photo_when_only_one_face_is_processed(
    one_face_client: TestClient, collection: str, enroll: Enroll, photos: Path
) -> None:
    """max_faces_per_image caps the faces embedded, not what `single` promises: a photo of
    two people is not enrolled as one of them."""
    response = enroll(one_face_client, collection, "Couple", photos / COUPLE, face_policy="single")

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "multiple_faces"
    assert response.json()["details"]["faces"] == 2
    assert subject_total(one_face_client, collection) == 0


def test_the_face_cap_keeps_the_largest_face_for_embed_and_the_largest_policy(
    one_face_client: TestClient, client: TestClient, collection: str, enroll: Enroll, photos: Path
) -> None:
    upload = {"image": (COUPLE, (photos / COUPLE).read_bytes())}
    every = client.post("/embed", files=upload).json()["faces"]
    largest = max(
        every, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1])
    )

    (capped,) = one_face_client.post("/embed", files=upload).json()["faces"]
    response = enroll(one_face_client, collection, "Couple", photos / COUPLE, face_policy="largest")

    assert len(every) == 2
    assert capped["bbox"] == pytest.approx(largest["bbox"], abs=1e-3)
    assert response.status_code == 201, response.text
    (face,) = response.json()["faces"]
    assert face["bbox"] == pytest.approx(largest["bbox"], abs=1e-3)


def stored_crops(client: TestClient) -> list[bytes | None]:
    """The aligned crops the gallery stored, read straight from its SQLite file."""
    data_dir = client.app.state.runtime.settings.data_dir  # type: ignore[attr-defined]
    with closing(sqlite3.connect(f"file:{data_dir / 'gallery.sqlite3'}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT aligned_png FROM faces ORDER BY face_id")]


@pytest.mark.parametrize("keep", [True, False], ids=["crops-kept", "crops-off"])
def test_store_aligned_crops_decides_whether_the_crop_is_kept(
    build_client: ClientFactory, keep: bool, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    app = build_client(store_aligned_crops=keep)
    response = enroll(app, "default", "Rumsfeld", lfw_photo(*RUMSFELD))
    assert response.status_code == 201, response.text

    (crop,) = stored_crops(app)
    if keep:
        assert crop is not None
        with Image.open(io.BytesIO(crop)) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (112, 112), "RGB")
    else:
        assert crop is None
    probe = app.post(
        "/identify", files={"image": ("p.jpg", lfw_photo(RUMSFELD[0], 51).read_bytes())}
    )
    (face,) = probe.json()["faces"]
    assert face["match"]["subject"] == "Rumsfeld"  # recognition does not need the crop
