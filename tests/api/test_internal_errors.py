"""Unexpected errors (a bug, a broken disk): answered as a logged 500 ``internal_error`` over
HTTP and a 1011 close over WebSocket, the exception's text never sent to the client."""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from app.main import build_runtime, create_app
from tests.conftest import make_settings

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.serving import StartServer

# What the failure says: paths and internals a client must never see.
SECRET = "disk error in /srv/facerec/secret-volume/gallery.sqlite3"
GENERIC_BODY = {"code": "internal_error", "message": "internal server error"}
# Frames sent before giving up on a close: the first frame with a face starts a
# recognition (a search) in the background; the close follows within a few frames.
MAX_FRAMES = 30


class SearchFails:
    """The real gallery, except that every search raises an unexpected error."""

    def __init__(self, gallery: Any) -> None:
        self._gallery = gallery
        self.searches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gallery, name)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        raise RuntimeError(SECRET)


@pytest.fixture(scope="module")
def failing(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, SearchFails]]:
    settings = make_settings(models_dir, tmp_path_factory.mktemp("gallery"))
    runtime = build_runtime(settings)
    gallery = SearchFails(runtime.service.gallery)
    runtime.service.gallery = gallery  # HTTP and /stream both search through it
    app = create_app(settings, runtime=runtime)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, gallery


def jpeg_of(photo: Path) -> bytes:
    with Image.open(photo) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()


def stream_until_closed(socket: Any, frame: bytes) -> tuple[int, WebSocketDisconnect]:
    """Send the frame and read each answer until the server closes: (answers, the close)."""
    answers = 0
    try:
        for _ in range(MAX_FRAMES):
            socket.send_bytes(frame)
            socket.receive_json()
            answers += 1
    except WebSocketDisconnect as closed:
        return answers, closed
    pytest.fail(f"the stream answered {MAX_FRAMES} frames and stayed open")


def test_an_unexpected_error_is_a_logged_500_that_does_not_echo_it(
    failing: tuple[TestClient, SearchFails],
    lfw_photo: LfwPhoto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, gallery = failing
    photo = lfw_photo("Donald_Rumsfeld", 39)
    before = gallery.searches

    with caplog.at_level(logging.ERROR):
        response = client.post("/identify", files={"image": (photo.name, photo.read_bytes())})

    assert response.status_code == 500
    assert response.json() == GENERIC_BODY
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    assert gallery.searches == before + 1
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("unhandled error on POST /identify" in r.getMessage() for r in logged)
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in logged)  # with traceback
    # The app is not broken for what does not search.
    assert client.get("/health").status_code == 200
    assert (
        client.post("/embed", files={"image": (photo.name, photo.read_bytes())}).status_code == 200
    )


def test_an_unexpected_error_in_a_stream_closes_it_with_1011_without_the_details(
    failing: tuple[TestClient, SearchFails],
    lfw_photo: LfwPhoto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, _ = failing
    frame = jpeg_of(lfw_photo("George_W_Bush", 65))

    with caplog.at_level(logging.ERROR), client.websocket_connect("/stream") as socket:
        answers, closed = stream_until_closed(socket, frame)

    assert closed.code == 1011
    assert closed.reason == "internal_error"
    assert answers >= 1  # frames were answered until the recognition failed
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in logged)
    # Another stream can still be opened: the failure ended one stream, not the service.
    with client.websocket_connect("/stream") as socket:
        socket.send_bytes(jpeg_of(lfw_photo("Donald_Rumsfeld", 39)))
        assert socket.receive_json()["frame"] == 0


def test_a_real_server_answers_a_broken_gallery_with_a_generic_500_and_logs_why(
    start_server: StartServer, tmp_path: Path, lfw_photo: LfwPhoto
) -> None:
    """The server process as deployed (its own logging): its gallery's table is pulled away
    underneath it, the next enrollment fails inside SQLite."""
    data_dir = tmp_path / "gallery"
    server = start_server(data_dir, auth="off")
    photo = lfw_photo("Donald_Rumsfeld", 39)

    def enroll(http: httpx.Client) -> httpx.Response:
        return http.post(
            "/enroll",
            data={"subject": "Rumsfeld"},
            files={"images": (photo.name, photo.read_bytes())},
        )

    with server.client() as http:
        assert enroll(http).status_code == 201
        with closing(sqlite3.connect(data_dir / "gallery.sqlite3")) as db:
            db.execute("ALTER TABLE faces RENAME TO faces_moved_away")
            db.commit()
        response = enroll(http)
        assert response.status_code == 500
        assert response.json() == GENERIC_BODY
        assert "faces_moved_away" not in response.text
        assert "sqlite" not in response.text.lower()
        assert http.get("/health").status_code == 200
    assert server.alive()
    log = server.log()
    assert "unhandled error on POST /enroll" in log
    assert "Traceback" in log
    assert "no such table" in log
