"""Name spoofing through the HTTP API: one policy for subjects and key names, and one
subject per look-alike name within a collection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.hardening.conftest import SettingsFactory


@pytest.fixture(scope="module")
def admin_client(
    secure_settings: SettingsFactory,
    admin_token: Callable[[Path], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("gallery")
    token = admin_token(data_dir)
    settings = secure_settings(data_dir, rate_limit_per_second=0)
    with TestClient(create_app(settings), headers={"X-API-Key": token}) as client:
        yield client


@pytest.fixture(scope="module")
def face(lfw_photo: LfwPhoto) -> tuple[str, bytes]:
    photo = lfw_photo("Donald_Rumsfeld", 39)
    return photo.name, photo.read_bytes()


@pytest.fixture(scope="module")
def other_face(lfw_photo: LfwPhoto) -> tuple[str, bytes]:
    photo = lfw_photo("Donald_Rumsfeld", 51)
    return photo.name, photo.read_bytes()


def enroll(
    client: TestClient, collection: str, subject: str, upload: tuple[str, bytes]
) -> httpx.Response:
    return client.post(
        "/enroll",
        params={"collection": collection},
        data={"subject": subject},
        files=[("images", upload)],
    )


@pytest.mark.parametrize(
    "subject",
    [
        "\u200b",
        "\ufeff",
        "\u2060",
        "\u00ad",
        "\u180e",
        "Ada\u200b",
        "Bob\u202eecilA",
        "\u2066Ada\u2069",
        "\u3164",
    ],
)
def test_invisible_and_direction_changing_subjects_are_refused(
    admin_client: TestClient, face: tuple[str, bytes], subject: str
) -> None:
    response = enroll(admin_client, "spoof", subject, face)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert admin_client.get("/subjects", params={"collection": "spoof"}).json()["total"] == 0


def test_a_look_alike_of_an_existing_subject_is_refused_with_409(
    admin_client: TestClient, face: tuple[str, bytes], other_face: tuple[str, bytes]
) -> None:
    assert enroll(admin_client, "alike", "Ada", face).status_code == 201
    for look_alike in ("ADA", "\uff21\uff44\uff41", " ada "):
        response = enroll(admin_client, "alike", look_alike, other_face)
        assert response.status_code == 409, look_alike
        body = response.json()
        assert body["code"] == "name_conflict"
        assert body["details"]["existing"] == "Ada"
    assert enroll(admin_client, "alike", "Ada", other_face).status_code == 201  # the same one
    listing = admin_client.get("/subjects", params={"collection": "alike"}).json()
    assert [(s["subject"], s["face_count"]) for s in listing["items"]] == [("Ada", 2)]
    # Another collection is another namespace.
    assert enroll(admin_client, "elsewhere", "ADA", face).status_code == 201


def test_a_deleted_subject_frees_its_look_alikes(
    admin_client: TestClient, face: tuple[str, bytes]
) -> None:
    assert enroll(admin_client, "freed", "Grace", face).status_code == 201
    assert enroll(admin_client, "freed", "GRACE", face).status_code == 409
    deleted = admin_client.delete("/subjects/Grace", params={"collection": "freed"})
    assert deleted.status_code == 200
    assert enroll(admin_client, "freed", "GRACE", face).status_code == 201


def test_composed_and_decomposed_spellings_are_one_subject(
    admin_client: TestClient, face: tuple[str, bytes], other_face: tuple[str, bytes]
) -> None:
    assert enroll(admin_client, "nfc", "Zoe\u0308", face).json()["subject"] == "Zo\u00eb"
    assert enroll(admin_client, "nfc", "Zo\u00eb", other_face).status_code == 201
    detail = admin_client.get("/subjects/Zoe\u0308", params={"collection": "nfc"})
    assert detail.status_code == 200
    assert detail.json()["face_count"] == 2


def test_subject_paths_and_key_names_follow_the_same_policy(admin_client: TestClient) -> None:
    path = admin_client.get("/subjects/Bob\u202eecilA", params={"collection": "spoof"})
    assert path.status_code == 422
    assert path.json()["code"] == "invalid_request"
    for name in ("admin\u202e", "\u200b", "ops\u2066"):
        key = admin_client.post("/keys", json={"name": name, "collections": ["x"]})
        assert key.status_code == 422, name
        assert key.json()["code"] == "invalid_request"
    created = admin_client.post("/keys", json={"name": "Zoe\u0308", "collections": ["x"]})
    assert created.status_code == 201
    assert created.json()["name"] == "Zo\u00eb"


def test_a_look_alike_is_refused_before_the_images_are_read(
    admin_client: TestClient, face: tuple[str, bytes]
) -> None:
    assert enroll(admin_client, "early", "Ada", face).status_code == 201
    not_an_image = ("x.jpg", b"\xff\xd8 not a jpeg at all")
    unreadable = enroll(admin_client, "early", "Grace", not_an_image)
    assert unreadable.status_code == 400  # what the same upload gets under a free name

    response = enroll(admin_client, "early", "ADA", not_an_image)

    assert response.status_code == 409  # no decode, no inference: the name was enough
    assert response.json()["details"] == {"collection": "early", "existing": "Ada"}
