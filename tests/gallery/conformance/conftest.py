"""The gallery contract, run on every backend: each test here runs once per backend.

``backend`` names one (``embedded``: SQLite + FAISS in a tmp folder; ``postgres``:
a fresh database on the session's real PostgreSQL server). ``open_gallery`` opens
(or, called again, reopens: a restart) the backend's store; everything opened is
closed at teardown.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from app.core.gallery import Gallery
from app.gallery import open_gallery as open_backend
from tests.gallery.conftest import DIM, MODEL_ID

BACKENDS = ("embedded", "postgres")
OpenGallery = Callable[..., Gallery]


@dataclass(frozen=True)
class Backend:
    name: str
    data_dir: Path
    database_url: str | None
    # The setting a user changes to point the service at another store.
    location_setting: str
    # Where the backend's SQL statements live (a test makes one fail).
    repository: ModuleType
    # Mark the store as written by a newer facerec than this one.
    make_schema_newer: Callable[[], None]

    def open(self, *, model_id: str = MODEL_ID, dim: int = DIM) -> Gallery:
        return open_backend(
            data_dir=self.data_dir, model_id=model_id, dim=dim, database_url=self.database_url
        )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    data_dir = tmp_path / "gallery"
    if request.param == "embedded":
        from app.gallery.embedded import repository as embedded_repository
        from app.gallery.embedded.schema import DB_FILENAME, SCHEMA_VERSION

        def newer_sqlite() -> None:
            with sqlite3.connect(data_dir / DB_FILENAME) as db:
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION + 1),),
                )

        return Backend(
            "embedded", data_dir, None, "FACEREC_DATA_DIR", embedded_repository, newer_sqlite
        )
    url: str = request.getfixturevalue("postgres_url")
    from app.gallery.postgres import repository as postgres_repository
    from app.storage.postgres.migrations import bundled_migrations

    def newer_postgres() -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO facerec_schema_migrations (version, name, sha256) "
                "VALUES (%s, 'from_the_future', '')",
                (len(bundled_migrations()) + 1,),
            )

    return Backend(
        "postgres", data_dir, url, "FACEREC_DATABASE_URL", postgres_repository, newer_postgres
    )


@pytest.fixture
def open_gallery(backend: Backend) -> Iterator[OpenGallery]:
    opened: list[Gallery] = []

    def open_(*, model_id: str = MODEL_ID, dim: int = DIM) -> Gallery:
        gallery = backend.open(model_id=model_id, dim=dim)
        opened.append(gallery)
        return gallery

    yield open_
    for gallery in opened:
        gallery.close()


@pytest.fixture
def gallery(open_gallery: OpenGallery) -> Gallery:
    return open_gallery()
