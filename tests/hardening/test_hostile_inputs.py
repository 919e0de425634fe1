"""Hostile and unusual inputs against a real server process: each gets its documented 4xx
and stable code (or 2xx where the input is actually valid), the server stays up, and its
memory stays bounded."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image

from tests.hardening import hostile_images as img
from tests.hardening.raw import peak_memory, reset_peak_memory
from tests.serving import Server, server_environment

COLLECTION = "hostile"
MAX_REQUEST_BYTES = 4 << 20
MAX_IMAGE_BYTES = 2 << 20
MAX_IMAGES_PER_ENROLL = 4
# Generous: the server may keep caches and arenas, but no input may cost it this much.
RSS_GROWTH_LIMIT = 400 << 20
# Peak resident memory during one request above the idle server (its high-water mark,
# reset before each case). With MAX_IMAGE_BYTES the largest input here peaks at about
# 25 MiB; a bomb, a lie or a header that promises more must never cost this much.
PEAK_GROWTH_LIMIT = 200 << 20


@dataclass(frozen=True)
class Inputs:
    face: Image.Image  # one frontal LFW face, 250 x 250
    face_jpeg: bytes
    admin: str
    scoped: str  # a key for COLLECTION only


Request = Callable[[Inputs], dict[str, Any]]


@dataclass(frozen=True)
class Hostile:
    request: Request  # keyword arguments of httpx.Client.request
    status: int
    code: str | None = None  # the stable error code, for 4xx
    faces: int | None = None  # faces found, for an identify that must succeed


# --- request builders -------------------------------------------------------------------------


def identify_with(make: Callable[[Inputs], bytes], name: str = "upload.bin") -> Request:
    return lambda i: {
        "method": "POST",
        "url": "/identify",
        "params": {"collection": COLLECTION},
        "files": {"image": (name, make(i), "application/octet-stream")},
    }


def identify_form(**form: str) -> Request:
    return lambda i: {
        "method": "POST",
        "url": "/identify",
        "params": {"collection": COLLECTION},
        "data": form,
        "files": {"image": ("face.jpg", i.face_jpeg, "image/jpeg")},
    }


def enroll_as(subject: str | bytes) -> Request:
    def build(i: Inputs) -> dict[str, Any]:
        if isinstance(subject, bytes):  # raw bytes in the form field: build the body by hand
            body, content_type = multipart(
                [("subject", None, subject), ("images", "face.jpg", i.face_jpeg)]
            )
            return {
                "method": "POST",
                "url": "/enroll",
                "params": {"collection": COLLECTION},
                "content": body,
                "headers": {"Content-Type": content_type, "X-API-Key": i.scoped},
            }
        return {
            "method": "POST",
            "url": "/enroll",
            "params": {"collection": COLLECTION},
            "data": {"subject": subject},
            "files": [("images", ("face.jpg", i.face_jpeg, "image/jpeg"))],
        }

    return build


def raw(method: str, url: str, **options: Any) -> Request:
    return lambda i: {"method": method, "url": url, **options}


def raw_body(content: bytes, content_type: str, url: str = "/identify") -> Request:
    return lambda i: {
        "method": "POST",
        "url": url,
        "params": {"collection": COLLECTION},
        "content": content,
        "headers": {"Content-Type": content_type, "X-API-Key": i.scoped},
    }


def multipart(
    parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und"
) -> tuple[bytes, str]:
    body = io.BytesIO()
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        body.write(value + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def chunked_upload(size: int) -> Iterator[bytes]:
    """A well-formed multipart start, then ``size`` bytes of file, with no Content-Length."""
    yield (b'--b0und\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n')
    chunk = b"\x00" * (256 << 10)
    for _ in range(size // len(chunk)):
        yield chunk


def face_as(image_format: str, mode: str = "RGB", **options: object) -> Callable[[Inputs], bytes]:
    return lambda i: img.encode(i.face.convert(mode), image_format, **options)


# --- the table ------------------------------------------------------------------------------

CASES: dict[str, Hostile] = {
    # empty, truncated or damaged images: 400 undecodable_image
    "empty-file": Hostile(identify_with(lambda i: b""), 400, "undecodable_image"),
    "random-bytes": Hostile(
        identify_with(lambda i: bytes(range(256)) * 40), 415, "unsupported_media_type"
    ),
    "truncated-jpeg": Hostile(
        identify_with(lambda i: i.face_jpeg[: len(i.face_jpeg) // 2]), 400, "undecodable_image"
    ),
    "corrupt-jpeg-header": Hostile(
        identify_with(lambda i: img.corrupt_header_jpeg(i.face_jpeg)), 400, "undecodable_image"
    ),
    "jpeg-magic-only": Hostile(identify_with(lambda i: b"\xff\xd8\xff"), 400, "undecodable_image"),
    "truncated-png": Hostile(
        identify_with(lambda i: face_as("PNG")(i)[:500]), 400, "undecodable_image"
    ),
    "png-bad-crc": Hostile(
        identify_with(lambda i: img.bad_crc_png(i.face)), 400, "undecodable_image"
    ),
    # not images at all (documents, markup): 415 unsupported_media_type
    "html-named-jpg": Hostile(
        identify_with(lambda i: b"<html><body>hi</body></html>", "face.jpg"),
        415,
        "unsupported_media_type",
    ),
    "svg": Hostile(
        identify_with(lambda i: b'<svg xmlns="http://www.w3.org/2000/svg" width="9999999"/>'),
        415,
        "unsupported_media_type",
    ),
    "pdf": Hostile(
        identify_with(lambda i: b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n"), 415, "unsupported_media_type"
    ),
    "png-text-chunk-bomb": Hostile(
        identify_with(lambda i: img.text_bomb_png(i.face)), 400, "undecodable_image"
    ),
    # images of formats the service does not take: 415
    "gif": Hostile(identify_with(face_as("GIF")), 415, "unsupported_media_type"),
    "animated-gif": Hostile(
        identify_with(lambda i: img.animated(i.face, "GIF")), 415, "unsupported_media_type"
    ),
    "multi-page-tiff": Hostile(
        identify_with(lambda i: img.animated(i.face, "TIFF")), 415, "unsupported_media_type"
    ),
    "tiff-named-jpg": Hostile(
        identify_with(face_as("TIFF"), "face.jpg"), 415, "unsupported_media_type"
    ),
    "ico": Hostile(identify_with(face_as("ICO")), 415, "unsupported_media_type"),
    # too large: 413
    "declared-100000x100000-png": Hostile(
        identify_with(lambda i: img.declared_size_png(100_000, 100_000)), 413, "image_too_large"
    ),
    "zero-bomb-png-12000x12000": Hostile(
        identify_with(lambda i: img.zero_bomb_png(12_000)), 413, "image_too_large"
    ),
    "declared-65000x65000-jpeg": Hostile(
        identify_with(lambda i: img.declared_size_jpeg(i.face_jpeg, 65_000, 65_000)),
        413,
        "image_too_large",
    ),
    "gif-bomb": Hostile(identify_with(lambda i: img.gif_bomb()), 413, "image_too_large"),
    "image-over-max-image-bytes": Hostile(
        identify_with(lambda i: i.face_jpeg + b"\x00" * (MAX_IMAGE_BYTES + 1)),
        413,
        "image_too_large",
    ),
    "body-over-max-request-bytes": Hostile(
        identify_with(lambda i: b"\x00" * (MAX_REQUEST_BYTES + 1)), 413, "request_too_large"
    ),
    "chunked-body-over-max-request-bytes": Hostile(
        lambda i: {
            "method": "POST",
            "url": "/identify",
            "params": {"collection": COLLECTION},
            "content": chunked_upload(2 * MAX_REQUEST_BYTES),
            "headers": {
                "Content-Type": "multipart/form-data; boundary=b0und",
                "X-API-Key": i.scoped,
            },
        },
        413,
        "request_too_large",
    ),
    "too-many-images-per-enroll": Hostile(
        lambda i: {
            "method": "POST",
            "url": "/enroll",
            "params": {"collection": COLLECTION},
            "data": {"subject": "many"},
            "files": [
                ("images", (f"{n}.jpg", i.face_jpeg, "image/jpeg"))
                for n in range(MAX_IMAGES_PER_ENROLL + 1)
            ],
        },
        422,
        "invalid_request",
    ),
    # unusual but valid images: decoded and searched
    "cmyk-jpeg": Hostile(identify_with(face_as("JPEG", "CMYK")), 200, faces=1),
    "grayscale-jpeg": Hostile(identify_with(face_as("JPEG", "L")), 200, faces=1),
    "progressive-jpeg": Hostile(identify_with(face_as("JPEG", progressive=True)), 200, faces=1),
    "exif-rotated-jpeg": Hostile(
        identify_with(lambda i: img.rotated_with_exif(i.face)), 200, faces=1
    ),
    "16-bit-gray-png": Hostile(identify_with(lambda i: img.gray16_png(i.face)), 200, faces=1),
    "16-bit-rgb-png": Hostile(identify_with(lambda i: img.rgb16_png(i.face)), 200, faces=1),
    "alpha-png": Hostile(identify_with(lambda i: img.with_alpha(i.face)), 200, faces=1),
    "palette-png-transparency": Hostile(
        identify_with(lambda i: img.palette_with_transparency(i.face)), 200, faces=1
    ),
    "bmp": Hostile(identify_with(face_as("BMP")), 200, faces=1),
    "webp": Hostile(identify_with(face_as("WEBP")), 200, faces=1),
    "animated-webp-first-frame": Hostile(
        identify_with(lambda i: img.animated(i.face, "WEBP")), 200, faces=1
    ),
    "animated-png-first-frame": Hostile(
        identify_with(lambda i: img.animated(i.face, "PNG")), 200, faces=1
    ),
    "jpeg-named-png": Hostile(identify_with(lambda i: i.face_jpeg, "face.png"), 200, faces=1),
    "1x1-png": Hostile(identify_with(lambda i: img.declared_size_png(1, 1)), 200, faces=0),
    "10000x1-png": Hostile(
        identify_with(lambda i: img.encode(Image.new("L", (10_000, 1)), "PNG")), 200, faces=0
    ),
    "1x10000-png": Hostile(
        identify_with(lambda i: img.encode(Image.new("L", (1, 10_000)), "PNG")), 200, faces=0
    ),
    # malformed requests
    "multipart-wrong-boundary": Hostile(
        lambda i: {
            "method": "POST",
            "url": "/identify",
            "params": {"collection": COLLECTION},
            "content": multipart([("image", "f.jpg", i.face_jpeg)], boundary="one")[0],
            "headers": {
                "Content-Type": "multipart/form-data; boundary=another",
                "X-API-Key": i.scoped,
            },
        },
        400,
        "malformed_request",
    ),
    "multipart-without-boundary": Hostile(
        raw_body(b"--x\r\n\r\n", "multipart/form-data"), 400, "malformed_request"
    ),
    "multipart-unterminated": Hostile(
        lambda i: {
            "method": "POST",
            "url": "/identify",
            "params": {"collection": COLLECTION},
            "content": multipart([("image", "f.jpg", i.face_jpeg)])[0][:-30],
            "headers": {"Content-Type": multipart([])[1], "X-API-Key": i.scoped},
        },
        422,
        "invalid_request",
    ),
    # JSON bodies carry base64 images: "aGVsbG8=" is the word "hello", not an image
    "json-body": Hostile(
        raw_body(b'{"image": "aGVsbG8="}', "application/json"), 415, "unsupported_media_type"
    ),
    "urlencoded-body": Hostile(
        raw_body(b"image=hello", "application/x-www-form-urlencoded"), 422, "invalid_request"
    ),
    "text-body": Hostile(raw_body(b"hello", "text/plain"), 415, "unsupported_media_type"),
    "no-body": Hostile(
        raw("POST", "/identify", params={"collection": COLLECTION}), 422, "invalid_request"
    ),
    "image-as-text-field": Hostile(
        lambda i: {
            "method": "POST",
            "url": "/identify",
            "params": {"collection": COLLECTION},
            "data": {"image": "not a file"},
        },
        422,
        "invalid_request",
    ),
    # names
    "subject-empty": Hostile(enroll_as(""), 422, "invalid_request"),
    "subject-whitespace": Hostile(enroll_as(" \t "), 422, "invalid_request"),
    "subject-path-traversal": Hostile(enroll_as("../../etc/passwd"), 422, "invalid_request"),
    "subject-backslash": Hostile(enroll_as("..\\..\\boot.ini"), 422, "invalid_request"),
    "subject-dotdot": Hostile(enroll_as(".."), 422, "invalid_request"),
    "subject-nul": Hostile(enroll_as("a\x00b"), 422, "invalid_request"),
    "subject-newline-log-injection": Hostile(
        enroll_as('x\n{"level": "ERROR"}'), 422, "invalid_request"
    ),
    "subject-10k-chars": Hostile(enroll_as("x" * 10_000), 422, "invalid_request"),
    "subject-invalid-utf8": Hostile(enroll_as(b"\xff\xfe\xed\xa0\x80"), 422, "invalid_request"),
    "subject-unicode": Hostile(enroll_as("Zoë 李小龍 👩🏽"), 201),
    # the one name policy refuses format characters, the emoji zero-width joiner included
    "subject-emoji-zwj-sequence": Hostile(enroll_as("Zoë 👩🏽\u200d🔬"), 422, "invalid_request"),
    "subject-sql-like": Hostile(enroll_as("Robert'); DROP TABLE faces;--"), 201),
    "collection-path-traversal": Hostile(
        raw("GET", "/subjects", params={"collection": "../../x"}), 422, "invalid_request"
    ),
    "collection-1000-chars": Hostile(
        raw("GET", "/subjects", params={"collection": "c" * 1000}), 422, "invalid_request"
    ),
    "collection-unicode": Hostile(
        raw("GET", "/subjects", params={"collection": "collé"}), 422, "invalid_request"
    ),
    "subject-path-nul": Hostile(
        raw("GET", "/subjects/%00", params={"collection": COLLECTION}), 422, "invalid_request"
    ),
    "face-id-too-long": Hostile(
        raw("DELETE", "/faces/" + "f" * 65, params={"collection": COLLECTION}),
        422,
        "invalid_request",
    ),
    # numbers
    "top-k-huge": Hostile(identify_form(top_k="1000000000"), 422, "invalid_request"),
    "top-k-astronomic": Hostile(identify_form(top_k="9" * 40), 422, "invalid_request"),
    "top-k-negative": Hostile(identify_form(top_k="-1"), 422, "invalid_request"),
    "top-k-text": Hostile(identify_form(top_k="many"), 422, "invalid_request"),
    "threshold-nan": Hostile(identify_form(threshold="NaN"), 422, "invalid_request"),
    "threshold-infinite": Hostile(identify_form(threshold="inf"), 422, "invalid_request"),
    "threshold-negative": Hostile(identify_form(threshold="-5"), 422, "invalid_request"),
    "threshold-overflow": Hostile(identify_form(threshold="1e999"), 422, "invalid_request"),
    "face-policy-unknown": Hostile(
        lambda i: {
            **enroll_as("policy")(i),
            "data": {"subject": "policy", "face_policy": "all"},
        },
        422,
        "invalid_request",
    ),
    "limit-zero": Hostile(
        raw("GET", "/subjects", params={"collection": COLLECTION, "limit": 0}), 422
    ),
    "offset-beyond-int64": Hostile(
        raw("GET", "/subjects", params={"collection": COLLECTION, "offset": 2**70}), 422
    ),
    "verify-both-modes": Hostile(
        lambda i: {
            "method": "POST",
            "url": "/verify",
            "params": {"collection": COLLECTION},
            "data": {"subject": "x"},
            "files": {
                "image": ("a.jpg", i.face_jpeg, "image/jpeg"),
                "image_a": ("b.jpg", i.face_jpeg, "image/jpeg"),
            },
        },
        422,
        "invalid_request",
    ),
    # keys
    "no-key": Hostile(lambda i: {**identify_form()(i), "headers": {}}, 401, "unauthorized"),
    "wrong-key": Hostile(
        lambda i: {**identify_form()(i), "headers": {"X-API-Key": "frk_" + "0" * 16 + "_x"}},
        401,
        "unauthorized",
    ),
    "key-in-query-string": Hostile(
        lambda i: {
            "method": "GET",
            "url": "/subjects",
            "params": {"collection": COLLECTION, "api_key": i.scoped},
            "headers": {},
        },
        401,
        "unauthorized",
    ),
    "key-of-another-collection": Hostile(
        raw("GET", "/subjects", params={"collection": "elsewhere"}), 403, "forbidden"
    ),
    "scoped-key-creates-keys": Hostile(
        raw("POST", "/keys", json={"name": "escalate", "admin": True}), 403, "forbidden"
    ),
    "keys-invalid-json": Hostile(
        lambda i: {
            **raw_body(b'{"name": ', "application/json", "/keys")(i),
            "headers": {"Content-Type": "application/json", "X-API-Key": i.admin},
        },
        400,
        "malformed_request",
    ),
    "keys-binary-body": Hostile(
        lambda i: {
            **raw_body(b"\xff\xfe\x00\x81", "application/json", "/keys")(i),
            "headers": {"Content-Type": "application/json", "X-API-Key": i.admin},
        },
        400,
        "malformed_request",
    ),
    "keys-path-like-collection": Hostile(
        lambda i: {
            "method": "POST",
            "url": "/keys",
            "json": {"name": "k", "collections": ["../x"]},
            "headers": {"X-API-Key": i.admin},
        },
        422,
        "invalid_request",
    ),
    # routing
    "unknown-route": Hostile(raw("GET", "/admin"), 404, "not_found"),
    "wrong-method": Hostile(raw("PUT", "/identify"), 405, "method_not_allowed"),
}


# --- the server -----------------------------------------------------------------------------


@dataclass
class Target:
    server: Server
    inputs: Inputs
    baseline_rss: int

    def rss(self) -> int:
        return int(psutil.Process(self.server.pid).memory_info().rss)

    def reset_peak(self) -> None:
        reset_peak_memory(self.server.pid)

    def peak(self) -> int:
        return peak_memory(self.server.pid)


@pytest.fixture(scope="module")
def target(
    models_dir: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("hostile")
    environment = server_environment(
        models_dir,
        folder / "gallery",
        auth="on",
        rate_limit_per_second="0",
        max_request_bytes=str(MAX_REQUEST_BYTES),
        max_image_bytes=str(MAX_IMAGE_BYTES),
        max_images_per_enroll=str(MAX_IMAGES_PER_ENROLL),
    )
    server = Server(environment, folder / "server.log")
    try:
        server.wait_ready()
        (admin,) = server.printed_keys()
        with server.client(admin) as http:
            created = http.post("/keys", json={"name": "hostile", "collections": [COLLECTION]})
            scoped = created.json()["api_key"]
        photo = data_root / "lfw" / "images" / "Donald_Rumsfeld" / "Donald_Rumsfeld_0039.jpg"
        face_jpeg = photo.read_bytes()
        inputs = Inputs(Image.open(io.BytesIO(face_jpeg)).convert("RGB"), face_jpeg, admin, scoped)
        with server.client(scoped) as http:  # warm up every path once before measuring
            assert http.request(**identify_form()(inputs)).status_code == 200
        target = Target(server, inputs, baseline_rss=0)
        target.baseline_rss = target.rss()
        yield target
    finally:
        server.stop()


def test_the_table_has_at_least_forty_kinds_of_input() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_input_gets_its_answer_and_the_server_stays_up(target: Target, name: str) -> None:
    case = CASES[name]
    request = case.request(target.inputs)
    request.setdefault("headers", {"X-API-Key": target.inputs.scoped})  # else the case's own
    target.reset_peak()  # the server's own high-water mark, from this request on
    idle = target.rss()
    with target.server.client() as http:
        response = http.request(**request)
        peak_growth = target.peak() - idle
        assert response.status_code == case.status, response.text[:500]
        if case.code is not None:
            assert response.json()["code"] == case.code
        if case.faces is not None:
            assert len(response.json()["faces"]) == case.faces
        assert "X-Request-ID" in response.headers
        assert http.get("/health").status_code == 200
    assert target.server.alive()
    growth = target.rss() - target.baseline_rss
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth >> 20} MiB"
    assert peak_growth < PEAK_GROWTH_LIMIT, f"peak memory {peak_growth >> 20} MiB above idle"
