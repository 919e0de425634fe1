"""Live-stream fixtures: synthetic webcam frames made of real face photos, and a WebSocket
client that speaks the /stream protocol."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.testclient import WebSocketTestSession

from tests.stream.pacing import settle

# A webcam frame.
FRAME_WIDTH, FRAME_HEIGHT = 640, 480
# (subject enrolled, LFW person, photos enrolled, another photo of them streamed)
BUSH = ("George W. Bush", "George_W_Bush", (7, 16), 65)
RUMSFELD = ("Donald Rumsfeld", "Donald_Rumsfeld", (39, 60), 51)

Frame = np.ndarray  # (FRAME_HEIGHT, FRAME_WIDTH, 3) uint8 RGB
# A face photo and where its top-left corner is in the first frame.
Placement = tuple[np.ndarray, tuple[int, int]]
MovingFrames = Callable[..., list[Frame]]
LoadPhoto = Callable[[Path], np.ndarray]
EnrollPeople = Callable[[TestClient, str], None]


def compose_frame(placements: Sequence[Placement], shift: tuple[int, int]) -> Frame:
    """Photos pasted on a dark 640x480 canvas, each moved by ``shift`` from its place."""
    canvas = np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), 24, dtype=np.uint8)
    for photo, (left, top) in placements:
        x, y = left + shift[0], top + shift[1]
        height, width = photo.shape[:2]
        canvas[y : y + height, x : x + width] = photo
    return canvas


def encode_jpeg(frame: Frame, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def load_photo() -> LoadPhoto:
    def load(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    return load


@pytest.fixture(scope="session")
def moving_frames() -> MovingFrames:
    """``moving_frames(placements, count, step=(4, 2))``: ``count`` frames in which every
    photo drifts by ``step`` pixels per frame (a person moving in front of a webcam)."""

    def frames(placements: Sequence[Placement], count: int, step: tuple[int, int] = (4, 2)):
        return [
            compose_frame(placements, (step[0] * index, step[1] * index)) for index in range(count)
        ]

    return frames


@pytest.fixture(scope="session")
def enroll_people(lfw_photo: Callable[[str, int], Path]) -> EnrollPeople:
    """``enroll_people(client, collection)``: Bush and Rumsfeld, from photos not streamed."""

    def enroll(client: TestClient, collection: str) -> None:
        for subject, person, numbers, _ in (BUSH, RUMSFELD):
            photos = [lfw_photo(person, number) for number in numbers]
            response = client.post(
                "/enroll",
                params={"collection": collection},
                data={"subject": subject},
                files=[("images", (p.name, p.read_bytes())) for p in photos],
            )
            assert response.status_code == 201, response.text

    return enroll


Exchange = Callable[[WebSocketTestSession, Sequence[Frame]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def exchange() -> Exchange:
    """``exchange(socket, frames)``: send each frame and wait for its answer (lock-step, so
    nothing is dropped) and for the recognitions it started (``pacing.settle``: a camera
    the recognizer keeps up with); the answers in order."""

    def run(
        socket: WebSocketTestSession, frames: Sequence[Frame], *, paced: bool = True
    ) -> list[dict[str, Any]]:
        """``paced=False``: do not wait for recognitions (a test that holds one)."""
        answers = []
        for frame in frames:
            socket.send_bytes(encode_jpeg(frame))
            answers.append(socket.receive_json())
            if paced:
                settle(socket)
        return answers

    return run


@pytest.fixture(scope="session")
def jpeg() -> Callable[[Frame], bytes]:
    return encode_jpeg
