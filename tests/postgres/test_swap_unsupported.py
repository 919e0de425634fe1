"""The PostgreSQL backend has no gallery generations yet: the swap routes say so plainly."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings

MANIFEST = Path(__file__).resolve().parents[2] / "models" / "manifests" / "w600k_mbf_int8_fast.json"


def test_activate_and_rollback_answer_model_swap_unsupported_and_nothing_is_written(
    models_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    data_dir = tmp_path / "unused-data-dir"
    settings = make_settings(models_dir, data_dir, database_url=postgres_url)
    with TestClient(create_app(settings)) as client:
        activate = client.post("/admin/models/activate", json={"manifest": str(MANIFEST)})
        rollback = client.post("/admin/models/rollback")
        listing = client.get("/admin/models")
        ready = client.get("/ready").json()

    for response in (activate, rollback):
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "model_swap_unsupported"
    assert listing.status_code == 200
    assert listing.json() == {
        "swap_supported": False,
        "active": 0,
        "previous": None,
        "generations": [],
        "swap": None,
    }
    assert "generation" not in ready
    assert "swap" not in ready
    assert not data_dir.exists()
