"""The service as the benchmarks reach it: over HTTP, a running server or apps built
in-process (lifespan included, throw-away galleries), one per recognizer."""

from __future__ import annotations

import mimetypes
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from app.main import create_app

HTTP_TIMEOUT_S = 300.0


class ServiceError(RuntimeError):
    """The service answered a benchmark request with an unexpected status."""


@dataclass(frozen=True, slots=True)
class Service:
    """One service to measure: its HTTP client and what ``/ready`` says it runs."""

    label: str
    client: httpx.Client
    ready: dict[str, Any]

    @property
    def detector_id(self) -> str:
        return str(self.ready["detector"]["model_id"])

    @property
    def recognizer_id(self) -> str:
        return str(self.ready["recognizer"]["model_id"])

    @property
    def threshold(self) -> float:
        return float(self.ready["threshold"])


def _ready(label: str, client: httpx.Client) -> Service:
    return Service(label=label, client=client, ready=checked_json(client.get("/ready")))


@contextmanager
def open_services(
    *,
    url: str | None,
    api_key: str | None,
    models_dir: Path,
    detector: str | None,
    recognizers: Sequence[tuple[str, str | None]],
    precision: str | None = None,
) -> Iterator[list[Service]]:
    """A client for ``url``, or one in-process app per ``(label, recognizer)`` (None: the
    default), each on its own temporary gallery with API keys off; ``precision`` sets
    their ``FACEREC_OPENVINO_PRECISION`` (None: the environment's, else ``auto``)."""
    if url:
        headers = {"X-API-Key": api_key} if api_key else None
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S, headers=headers) as client:
            yield [_ready(url, client)]
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    with ExitStack() as stack:
        services = []
        for label, recognizer in recognizers:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            models = {"detector": detector, "recognizer": recognizer}
            chosen = {"openvino_precision": precision} if precision else {}
            settings = Settings(
                models_dir=models_dir,
                data_dir=data_dir,
                log_level="WARNING",
                auth=False,
                **{field: value for field, value in models.items() if value},  # type: ignore[arg-type]
                **chosen,  # type: ignore[arg-type]
            )
            client = stack.enter_context(TestClient(create_app(settings)))
            services.append(_ready(label, client))
        yield services


def upload(path: Path) -> tuple[str, bytes, str]:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, path.read_bytes(), content_type


def checked_json(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    raise ServiceError(
        f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} "
        f"{response.text[:500]}"
    )


def bbox_area(face: dict[str, Any]) -> float:
    x1, y1, x2, y2 = face["bbox"]
    return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


def largest_face(faces: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(faces, key=bbox_area, default=None)
