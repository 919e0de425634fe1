"""Edge limits (body size, admission, faces per photo) and observability (metrics, request
ids) on a started app with real models."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.api.limits import AdmissionGate, AdmissionMiddleware
from app.main import create_app

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.hardening.conftest import SettingsFactory

MAX_REQUEST_BYTES = 512 * 1024  # the group photo is ~130 kB
GROUP_PHOTO = "insightface_t1.jpg"  # 6 faces


@pytest.fixture(scope="module")
def app_client(
    secure_settings: SettingsFactory,
    admin_token: Callable[[Path], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("gallery")
    token = admin_token(data_dir)
    settings = secure_settings(
        data_dir,
        rate_limit_per_second=0,
        max_request_bytes=MAX_REQUEST_BYTES,
        max_faces_per_image=2,
    )
    with TestClient(create_app(settings), headers={"X-API-Key": token}) as client:
        yield client


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample in /metrics (0 when absent)."""
    text = client.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        found = ",".join(sorted(sample_labels.rstrip("}").split(","))) if sample_labels else ""
        if sample_name == name and found == wanted:
            return float(value)
    return 0.0


# --- request body size ----------------------------------------------------------------------


def test_a_declared_oversized_body_is_refused_before_it_is_read(app_client: TestClient) -> None:
    response = app_client.post(
        "/identify", files={"image": ("big.jpg", b"\xff" * (MAX_REQUEST_BYTES + 1))}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"


def test_a_streamed_oversized_body_is_refused_when_it_passes_the_limit(
    app_client: TestClient,
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * (MAX_REQUEST_BYTES // 2)

    response = app_client.post(
        "/identify",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=abc"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"


def test_a_body_under_the_limit_is_served(app_client: TestClient, grey_png: bytes) -> None:
    response = app_client.post("/identify", files={"image": ("grey.png", grey_png)})
    assert response.status_code == 200
    assert response.json()["faces"] == []


# --- admission ------------------------------------------------------------------------------
# A real overload of every inference route (slots held by real connections) is in
# test_edge.py; this checks the middleware alone.


def test_the_admission_middleware_refuses_only_beyond_capacity() -> None:
    """Two requests in flight through a gate of one: the second is refused, the first
    completes, and the slot is free again afterwards."""
    gate = AdmissionGate(1)
    release = anyio.Event()
    entered = anyio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = AdmissionMiddleware(slow_app, gate=lambda: gate, paths=frozenset({"/identify"}))

    async def call(path: str) -> int:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": []}
        await middleware(scope, receive, send)
        status: int = sent[0]["status"]
        return status

    async def scenario() -> list[int]:
        statuses: list[int] = []
        async with anyio.create_task_group() as group:

            async def first() -> None:
                statuses.append(await call("/identify"))

            group.start_soon(first)
            await entered.wait()
            statuses.append(await call("/identify"))
            release.set()
        return statuses

    assert anyio.run(scenario) == [503, 200]
    assert gate.in_use == 0


# --- faces per photo ------------------------------------------------------------------------


def test_only_the_largest_faces_of_a_crowd_are_processed(
    app_client: TestClient, photos: Path
) -> None:
    photo = photos / GROUP_PHOTO
    before = metric(app_client, "facerec_faces_ignored_total")
    response = app_client.post("/embed", files={"image": (photo.name, photo.read_bytes())})
    assert response.status_code == 200
    faces = response.json()["faces"]
    assert len(faces) == 2
    assert metric(app_client, "facerec_faces_ignored_total") == before + 4


# --- metrics and request ids ------------------------------------------------------------------


def test_metrics_cover_latency_stages_batches_gallery_and_error_codes(
    app_client: TestClient, lfw_photo: LfwPhoto
) -> None:
    photo = lfw_photo("Donald_Rumsfeld", 39)
    enrolled = app_client.post(
        "/enroll",
        params={"collection": "metrics"},
        data={"subject": "Rumsfeld"},
        files=[("images", (photo.name, photo.read_bytes()))],
    )
    assert enrolled.status_code == 201
    assert app_client.get("/subjects/Nobody", params={"collection": "metrics"}).status_code == 404
    assert app_client.get("/subjects", headers={"X-API-Key": "nope"}).status_code == 401

    text = app_client.get("/metrics").text
    for stage in ("decode", "detect", "align", "embed"):
        assert metric(app_client, "facerec_inference_stage_duration_seconds_count", stage=stage) > 0
    assert metric(app_client, "facerec_embed_batch_faces_count") > 0
    assert metric(app_client, "facerec_gallery_faces", collection="metrics") == 1
    assert metric(app_client, "facerec_errors_total", code="subject_not_found") >= 1
    assert metric(app_client, "facerec_errors_total", code="unauthorized") >= 1
    assert (
        metric(
            app_client,
            "facerec_http_requests_total",
            method="GET",
            route="/subjects/{subject}",
            status="404",
        )
        >= 1
    )
    assert 'route="/subjects/{subject}"' in text
    assert "Nobody" not in text  # raw paths never become labels
    assert "process_resident_memory_bytes" in text


def test_request_ids_are_echoed_or_generated(app_client: TestClient) -> None:
    echoed = app_client.get("/health", headers={"X-Request-ID": "trace-42.a"})
    assert echoed.headers["X-Request-ID"] == "trace-42.a"
    generated = app_client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    hostile = app_client.get("/health", headers={"X-Request-ID": "x" * 500})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-ID"])
    error = app_client.get("/subjects", headers={"X-API-Key": "", "X-Request-ID": "e-1"})
    assert error.status_code == 401
    assert error.headers["X-Request-ID"] == "e-1"
