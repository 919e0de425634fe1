"""The error table: every client mistake gets its status, a stable code and a JSON body
{"code", "message"(, "details")}; none of them is a 500."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from PIL import Image

if TYPE_CHECKING:
    from conftest import ClientFactory, LfwPhoto

# Symbolic uploads, resolved per test: a one-face LFW JPEG (~7 kB) and a faceless grey PNG
# (320x240 = 76,800 pixels, a few hundred bytes).
LFW = "<lfw photo>"
GREY = "<grey png>"
TRUNCATED = "<the lfw photo cut in half>"
JUNK = b"these bytes are not an image at all"
# The limited app refuses the LFW photo for its bytes and the grey PNG for its pixels.
LIMITED_MAX_BYTES = 4096
LIMITED_MAX_PIXELS = 10_000


def encoded(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(buffer, format=image_format)
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    method: str
    url: str
    status: int
    code: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    limited: bool = False  # send to the app with LIMITED_MAX_BYTES / LIMITED_MAX_PIXELS


def enroll_case(
    status: int,
    code: str,
    upload: str | bytes,
    *,
    data: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    limited: bool = False,
) -> Case:
    form = data or {"subject": "S"}
    return Case("POST", "/enroll", status, code, {"images": upload}, form, params or {}, limited)


def image_case(
    url: str,
    status: int,
    code: str,
    upload: str | bytes,
    *,
    data: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    limited: bool = False,
) -> Case:
    return Case("POST", url, status, code, {"image": upload}, data or {}, params or {}, limited)


def pair_case(
    status: int,
    code: str,
    upload: str | bytes,
    *,
    data: dict[str, str] | None = None,
    limited: bool = False,
) -> Case:
    files = {"image_a": upload, "image_b": LFW}
    return Case("POST", "/verify", status, code, files, data or {}, {}, limited)


CASES = {
    # --- 400: an empty, truncated or damaged image ------------------------------------------
    "identify-empty-file": image_case("/identify", 400, "undecodable_image", b""),
    "identify-truncated-jpeg": image_case("/identify", 400, "undecodable_image", TRUNCATED),
    "embed-truncated-jpeg": image_case("/embed", 400, "undecodable_image", TRUNCATED),
    "enroll-truncated-jpeg": enroll_case(400, "undecodable_image", TRUNCATED),
    "verify-truncated-jpeg": pair_case(400, "undecodable_image", TRUNCATED),
    # --- 415: not an image at all (a README, a PDF) ----------------------------------------
    "identify-junk": image_case("/identify", 415, "unsupported_media_type", JUNK),
    "embed-junk": image_case("/embed", 415, "unsupported_media_type", JUNK),
    "enroll-junk": enroll_case(415, "unsupported_media_type", JUNK),
    "verify-junk": pair_case(415, "unsupported_media_type", JUNK),
    "identify-pdf": image_case("/identify", 415, "unsupported_media_type", b"%PDF-1.7\n%\xb5"),
    # --- 415: an image, but not an accepted format ------------------------------------------------
    "identify-gif": image_case("/identify", 415, "unsupported_media_type", encoded("GIF")),
    "identify-tiff": image_case("/identify", 415, "unsupported_media_type", encoded("TIFF")),
    "embed-tiff": image_case("/embed", 415, "unsupported_media_type", encoded("TIFF")),
    "enroll-gif": enroll_case(415, "unsupported_media_type", encoded("GIF")),
    "verify-gif": pair_case(415, "unsupported_media_type", encoded("GIF")),
    # --- 413: too many bytes or pixels ---------------------------------------------------------
    "identify-too-many-bytes": image_case("/identify", 413, "image_too_large", LFW, limited=True),
    "embed-too-many-bytes": image_case("/embed", 413, "image_too_large", LFW, limited=True),
    "enroll-too-many-bytes": enroll_case(413, "image_too_large", LFW, limited=True),
    "verify-too-many-bytes": pair_case(413, "image_too_large", LFW, limited=True),
    "identify-too-many-pixels": image_case("/identify", 413, "image_too_large", GREY, limited=True),
    "enroll-too-many-pixels": enroll_case(413, "image_too_large", GREY, limited=True),
    # --- 422: missing or unacceptable fields ---------------------------------------------
    "identify-no-image": Case("POST", "/identify", 422, "invalid_request"),
    "embed-no-image": Case("POST", "/embed", 422, "invalid_request"),
    "enroll-no-subject": Case("POST", "/enroll", 422, "invalid_request", {"images": LFW}),
    "enroll-no-images": Case("POST", "/enroll", 422, "invalid_request", data={"subject": "S"}),
    "verify-no-fields": Case("POST", "/verify", 422, "invalid_request"),
    "identify-collection-dotdot": image_case(
        "/identify", 422, "invalid_request", LFW, params={"collection": "../x"}
    ),
    "identify-collection-space": image_case(
        "/identify", 422, "invalid_request", LFW, params={"collection": "a b"}
    ),
    "identify-collection-empty": image_case(
        "/identify", 422, "invalid_request", LFW, params={"collection": ""}
    ),
    "enroll-collection-dotdot": enroll_case(
        422, "invalid_request", LFW, params={"collection": "../x"}
    ),
    "subjects-collection-slash": Case(
        "GET", "/subjects", 422, "invalid_request", params={"collection": "a/b"}
    ),
    "identify-top-k-0": image_case("/identify", 422, "invalid_request", LFW, data={"top_k": "0"}),
    "identify-top-k-over-max": image_case(
        "/identify", 422, "invalid_request", LFW, data={"top_k": "101"}
    ),
    "identify-top-k-not-a-number": image_case(
        "/identify", 422, "invalid_request", LFW, data={"top_k": "two"}
    ),
    "identify-threshold-over-1": image_case(
        "/identify", 422, "invalid_request", LFW, data={"threshold": "1.5"}
    ),
    "identify-threshold-nan": image_case(
        "/identify", 422, "invalid_request", LFW, data={"threshold": "nan"}
    ),
    "verify-threshold-under-minus-1": pair_case(
        422, "invalid_request", LFW, data={"threshold": "-1.5"}
    ),
    "enroll-bad-face-policy": enroll_case(
        422, "invalid_request", LFW, data={"subject": "S", "face_policy": "all"}
    ),
    # --- 404 / 405 ------------------------------------------------------------------------------
    "unknown-route": Case("GET", "/nowhere", 404, "not_found"),
    "wrong-method": Case("DELETE", "/health", 405, "method_not_allowed"),
    "unknown-subject": Case("GET", "/subjects/Nobody", 404, "subject_not_found"),
    "delete-unknown-subject": Case("DELETE", "/subjects/Nobody", 404, "subject_not_found"),
    "delete-unknown-face": Case("DELETE", "/faces/0123abcd", 404, "face_not_found"),
}


@pytest.fixture(scope="module")
def limited_client(build_client: ClientFactory) -> TestClient:
    return build_client(max_image_bytes=LIMITED_MAX_BYTES, max_image_pixels=LIMITED_MAX_PIXELS)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_client_errors_have_a_status_a_code_and_a_json_body(
    client: TestClient,
    limited_client: TestClient,
    lfw_photo: LfwPhoto,
    grey_png: bytes,
    case: Case,
) -> None:
    lfw = lfw_photo("Donald_Rumsfeld", 39).read_bytes()
    assert len(lfw) > LIMITED_MAX_BYTES
    uploads = {LFW: lfw, GREY: grey_png, TRUNCATED: lfw[: len(lfw) // 2]}
    files = {
        name: (f"{name}.bin", uploads[value] if isinstance(value, str) else value)
        for name, value in case.files.items()
    }
    app_client = limited_client if case.limited else client

    response = app_client.request(
        case.method, case.url, params=case.params, data=case.data, files=files or None
    )

    assert response.status_code != 500
    assert (response.status_code, response.json().get("code")) == (case.status, case.code), (
        response.text
    )
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert {"code", "message"} <= set(body) <= {"code", "message", "details"}
    assert isinstance(body["message"], str)
    assert body["message"]
    assert "Traceback" not in body["message"]
    assert isinstance(body.get("details", {}), dict)


def test_validation_errors_name_the_offending_field(client: TestClient) -> None:
    response = client.post("/identify", data={"top_k": "0"}, files={"image": ("x.jpg", JUNK)})

    assert response.status_code == 422
    fields = [error["field"] for error in response.json()["details"]["errors"]]
    assert fields == ["body.top_k"]


def test_a_too_large_upload_says_what_the_limit_is(
    limited_client: TestClient, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo("Donald_Rumsfeld", 39)

    response = limited_client.post("/embed", files={"image": (photo.name, photo.read_bytes())})

    assert response.status_code == 413
    assert str(LIMITED_MAX_BYTES) in response.json()["message"]


def test_an_unsupported_format_names_the_accepted_ones(client: TestClient) -> None:
    response = client.post("/embed", files={"image": ("x.gif", encoded("GIF"))})

    assert response.status_code == 415
    details = response.json()["details"]
    assert details["format"] == "GIF"
    assert set(details["accepted"]) == {"JPEG", "PNG", "WEBP", "BMP"}
