"""Shared fixtures: real models and real photos from ../shared (see README, Testing)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.pgserver import INSTALL_HINT, PostgresServer, missing_pieces, reap_orphans
from tests.serving import Server, StartServer, server_environment

REPO = Path(__file__).resolve().parent.parent
# Skips are listed at the end; in CI, one not in tests/allowed_skips.toml fails the run.
pytest_plugins = ["tests.skips"]


def _folder(variable: str, default: Path) -> Path:
    path = Path(os.environ.get(variable, default)).resolve()
    if not path.is_dir():
        pytest.exit(f"{variable}={path} is not a folder: point it at the shared models/data", 2)
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return _folder("FACEREC_MODELS_DIR", REPO.parent / "shared" / "models")


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _folder("FACEREC_DATA_ROOT", REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def photos(data_root: Path) -> Path:
    return data_root / "photos"


def make_settings(models_dir: Path, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test app: API keys off unless a test turns them on (tests/hardening)."""
    values: dict[str, object] = {"auth": False, "log_format": "text", **overrides}
    return Settings(models_dir=models_dir, data_dir=data_dir, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app per test module (models load once); tests isolate through collections."""
    data_dir = tmp_path_factory.mktemp("gallery")
    with TestClient(create_app(make_settings(models_dir, data_dir))) as test_client:
        yield test_client


@pytest.fixture
def collection() -> str:
    """A fresh collection name: tests sharing one app never see each other's subjects."""
    return f"t{uuid.uuid4().hex[:12]}"


# --- HTTP API helpers (tests/api) ---------------------------------------------------------

# An upload: a photo on disk, or (file name, bytes) made by the test.
Upload = Path | tuple[str, bytes]
ClientFactory = Callable[..., TestClient]
LfwPhoto = Callable[[str, int], Path]
Enroll = Callable[..., httpx.Response]
Identify = Callable[..., httpx.Response]


def as_file(upload: Upload) -> tuple[str, bytes]:
    if isinstance(upload, Path):
        return upload.name, upload.read_bytes()
    return upload


@pytest.fixture(scope="session")
def lfw_photo(data_root: Path) -> LfwPhoto:
    """``lfw_photo("George_W_Bush", 7)``: the path of LFW's George_W_Bush_0007.jpg."""

    def path(name: str, number: int) -> Path:
        photo = data_root / "lfw" / "images" / name / f"{name}_{number:04d}.jpg"
        assert photo.is_file(), f"{photo} is missing from the shared data"
        return photo

    return path


@pytest.fixture(scope="module")
def build_client(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClientFactory]:
    """``build_client(**settings)``: another started app (own tmp gallery) with Settings
    overrides such as small limits or strict gates; closed when the module ends."""
    with ExitStack() as clients:

        def build(**overrides: object) -> TestClient:
            data_dir = tmp_path_factory.mktemp("gallery")
            app = create_app(make_settings(models_dir, data_dir, **overrides))
            return clients.enter_context(TestClient(app))

        yield build


@pytest.fixture(scope="session")
def enroll() -> Enroll:
    """``enroll(client, collection, subject, *uploads, **form)``: POST /enroll."""

    def post(
        client: TestClient, collection: str, subject: str, *uploads: Upload, **form: str
    ) -> httpx.Response:
        return client.post(
            "/enroll",
            params={"collection": collection},
            data={"subject": subject, **form},
            files=[("images", as_file(upload)) for upload in uploads],
        )

    return post


@pytest.fixture(scope="session")
def identify() -> Identify:
    """``identify(client, collection, upload, **form)``: POST /identify."""

    def post(client: TestClient, collection: str, upload: Upload, **form: str) -> httpx.Response:
        return client.post(
            "/identify",
            params={"collection": collection},
            data=form,
            files={"image": as_file(upload)},
        )

    return post


@pytest.fixture(scope="session")
def grey_png() -> bytes:
    """A plain grey 320x240 PNG: a valid image without any face."""
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- real server processes (tests/api, tests/hardening) -------------------------------------


@pytest.fixture
def start_server(models_dir: Path, tmp_path: Path) -> Iterator[StartServer]:
    """``start_server(data_dir, **settings)``: a ready server; all are stopped at the end."""
    servers: list[Server] = []

    def start(data_dir: Path, **settings: str) -> Server:
        log_path = tmp_path / f"server-{len(servers)}.log"
        server = Server(server_environment(models_dir, data_dir, **settings), log_path)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


# --- a real PostgreSQL + pgvector (tests/gallery/conformance, tests/postgres) ------------------

# fsync off: these tests kill clients and restart the server cleanly, never the
# machine, so what a commit hands to the OS survives them; the disk is shared.
POSTGRES_TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
TEMPLATE_DATABASE = "facerec_template"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway server per test session, with a migrated template database.

    Without PostgreSQL and pgvector the tests that need it skip, except in CI
    (``CI`` set), where they fail: .ci/run installs both.
    """
    problem = missing_pieces()
    if problem:
        message = f"{problem}: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL for the PostgreSQL tests: {message}")
        pytest.skip(message)
    reap_orphans()  # servers of earlier runs killed before their teardown
    server = PostgresServer(POSTGRES_TEST_SETTINGS)
    try:
        from app.storage.postgres import open_database

        open_database(server.create_database(TEMPLATE_DATABASE)).close()
        server.psql(f'ALTER DATABASE "{TEMPLATE_DATABASE}" WITH IS_TEMPLATE true')
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database of its own for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres_server.psql(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DATABASE}"')
    yield postgres_server.url(name)
    postgres_server.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
