"""Helpers of the real-server model swap tests (tests/api/test_model_swap.py and
tests/training/test_closed_loop.py): identify, read /ready, wait for a swap job, and a
client that keeps identifying one person while a swap runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.serving import Server

# The /ready swap states of a job still running.
RUNNING = ("loading", "copying", "switching")


def frontal(data_root: Path, identity: str, number: int) -> Path:
    return data_root / "cfp" / "images" / identity / "frontal" / f"{number:02d}.jpg"


def enroll(http: httpx.Client, collection: str, subject: str, photos: list[Path]) -> None:
    response = http.post(
        "/enroll",
        params={"collection": collection},
        data={"subject": subject},
        files=[("images", (photo.name, photo.read_bytes())) for photo in photos],
    )
    assert response.status_code == 201, response.text


def identify(http: httpx.Client, collection: str, photo: Path) -> dict[str, Any]:
    response = http.post(
        "/identify",
        params={"collection": collection},
        files={"image": (photo.name, photo.read_bytes())},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def matched(body: dict[str, Any]) -> str | None:
    (face,) = body["faces"]
    match = face["match"]
    return None if match is None else str(match["subject"])


def ready(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/ready")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_swap(http: httpx.Client) -> dict[str, Any]:
    """/ready once the job has ended (the server's own job, no fixed sleep)."""
    while True:
        body = ready(http)
        if body["swap"]["state"] not in RUNNING:
            return body
        time.sleep(0.2)


def keep_identifying(
    server: Server,
    key: str,
    collection: str,
    photo: Path,
    expected: str,
    stop: threading.Event,
) -> list[str]:
    """Identify ``photo`` until ``stop``; every answer must be a 200 naming ``expected``;
    returns the recognizer model id of each answer, in order. The last request starts
    after ``stop`` was seen, so it is answered by whatever serves once the caller stopped
    us."""
    models = []
    with server.client(key) as http:
        while True:
            stopping = stop.is_set()
            body = identify(http, collection, photo)
            assert matched(body) == expected, body
            models.append(body["model"]["recognizer"])
            if stopping and len(models) >= 2:
                return models
