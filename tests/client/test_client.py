"""The Python client against a real `facerec serve` process with API keys on: every
method, errors as ApiError with the service's codes, and a live stream."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from app.client import ApiError, AsyncFaceRecClient, FaceRecClient

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.serving import Server, StartServer

pytestmark = pytest.mark.slow

COLLECTION = "clients"
# Lock-step frames sent before giving up on a name appearing (votes need a few).
MAX_FRAMES = 30


@pytest.fixture
def server(start_server: StartServer, tmp_path: Path) -> Server:
    return start_server(tmp_path / "gallery", rate_limit_per_second="0")


@pytest.fixture
def client(server: Server) -> Iterator[FaceRecClient]:
    (admin,) = server.printed_keys()
    with FaceRecClient(server.url, api_key=admin, collection=COLLECTION) as facerec:
        yield facerec


def webcam_frame(photo: Path, shift: int) -> bytes:
    """The photo on a dark 640x480 canvas, moved ``shift`` pixels: a JPEG frame."""
    canvas = np.full((480, 640, 3), 24, np.uint8)
    with Image.open(photo) as image:
        face = np.asarray(image.convert("RGB"))
    canvas[100 + shift : 100 + shift + face.shape[0], 200 + shift : 200 + shift + face.shape[1]] = (
        face
    )
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_the_sync_client_does_what_the_readme_says(
    client: FaceRecClient, lfw_photo: LfwPhoto, grey_png: bytes
) -> None:
    enrolled = client.enroll(
        "Ada",
        [lfw_photo("George_W_Bush", 7), lfw_photo("George_W_Bush", 16).read_bytes(), grey_png],
    )
    identified = client.identify(lfw_photo("George_W_Bush", 65))
    pair = client.verify(lfw_photo("George_W_Bush", 7), lfw_photo("Donald_Rumsfeld", 39))
    against = client.verify_subject(lfw_photo("George_W_Bush", 65), "Ada")
    embedded = client.embed(lfw_photo("Donald_Rumsfeld", 39))
    page = client.subjects()
    detail = client.subject("Ada")
    crop = client.face_crop(detail.faces[0].face_id)

    assert [face.created for face in enrolled.faces] == [True, True]
    assert [(r.image, r.code) for r in enrolled.rejected] == [("images[2]", "no_face")]
    (face,) = identified.faces
    assert face.match is not None
    assert face.match.subject == "Ada"
    assert face.quality.score > 0
    assert pair.match is False
    assert against.match is True
    assert len(embedded.faces[0].embedding) == 512
    assert [s.subject for s in page.items] == ["Ada"]
    assert detail.face_count == 2
    assert crop.startswith(b"\x89PNG")
    assert [(c.name, c.faces) for c in client.collections().items] == [(COLLECTION, 2)]
    assert client.delete_face(detail.faces[0].face_id).subject == "Ada"
    assert client.delete_subject("Ada").deleted_faces == 1


def test_errors_are_raised_with_the_services_codes(
    client: FaceRecClient, server: Server, lfw_photo: LfwPhoto, grey_png: bytes
) -> None:
    with pytest.raises(ApiError) as no_face:
        client.enroll("Nobody", [grey_png])
    with pytest.raises(ApiError) as missing:
        client.subject("Nobody")
    with (
        FaceRecClient(server.url, api_key="frk_wrong") as stranger,
        pytest.raises(ApiError) as denied,
    ):
        stranger.identify(lfw_photo("George_W_Bush", 7))

    assert (no_face.value.status, no_face.value.code) == (422, "no_face")
    assert no_face.value.details["rejected"][0]["image"] == "images[0]"
    assert (missing.value.status, missing.value.code) == (404, "subject_not_found")
    assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    assert denied.value.request_id


def test_a_live_stream_names_an_enrolled_face(client: FaceRecClient, lfw_photo: LfwPhoto) -> None:
    client.enroll("Bush", [lfw_photo("George_W_Bush", 7), lfw_photo("George_W_Bush", 16)])
    photo = lfw_photo("George_W_Bush", 65)
    answers = []
    with client.stream() as live:
        for index in range(MAX_FRAMES):
            live.send(webcam_frame(photo, index % 10))
            answers.append(live.receive(timeout=60))
            if any(face.subject == "Bush" for face in answers[-1].faces):
                break

    assert [answer.frame for answer in answers] == list(range(len(answers)))
    assert answers[-1].faces[0].subject == "Bush", answers[-1]
    assert answers[-1].faces[0].similarity is not None


def test_the_async_client_enrolls_identifies_and_streams(
    server: Server, lfw_photo: LfwPhoto
) -> None:
    (admin,) = server.printed_keys()
    photo = lfw_photo("Donald_Rumsfeld", 51)

    async def scenario() -> tuple[str | None, int, int]:
        async with AsyncFaceRecClient(server.url, api_key=admin, collection="async") as facerec:
            await facerec.enroll(
                "Rumsfeld", [lfw_photo("Donald_Rumsfeld", 39), lfw_photo("Donald_Rumsfeld", 60)]
            )
            identified = await facerec.identify(photo)
            async with facerec.stream() as live:
                await live.send(webcam_frame(photo, 0))
                answer = await live.receive()
            total = (await facerec.subjects()).total
        match = identified.faces[0].match
        return (match.subject if match else None), answer.frame, total

    subject, frame, total = asyncio.run(scenario())

    assert (subject, frame, total) == ("Rumsfeld", 0, 1)
