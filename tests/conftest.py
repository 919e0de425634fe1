"""Shared fixtures: real models and real photos from ../shared (see README, Testing)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

REPO = Path(__file__).resolve().parent.parent


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
    return Settings(models_dir=models_dir, data_dir=data_dir, **overrides)  # type: ignore[arg-type]


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
