"""Fixtures of the hardening tests: real server processes, keys, photos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.auth.store import KEYS_FILENAME, SqliteKeyStore
from app.config import Settings

SettingsFactory = Callable[..., Settings]


@pytest.fixture(scope="session")
def secure_settings(models_dir: Path) -> SettingsFactory:
    """``secure_settings(data_dir, **overrides)``: production defaults (API keys on), quiet
    text logs, and the test's overrides."""

    def build(data_dir: Path, **overrides: object) -> Settings:
        values: dict[str, object] = {"log_format": "text", "log_level": "WARNING", **overrides}
        return Settings(models_dir=models_dir, data_dir=data_dir, **values)  # type: ignore[arg-type]

    return build


@pytest.fixture(scope="session")
def admin_token() -> Callable[[Path], str]:
    """``admin_token(data_dir)``: seed an admin key into a data dir before its app starts."""

    def seed(data_dir: Path) -> str:
        data_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteKeyStore(data_dir / KEYS_FILENAME)
        try:
            return store.create(name="test-admin", collections=(), admin=True).token
        finally:
            store.close()

    return seed
