"""Structured logs of a real server process: one JSON object per line, request ids, and
never image bytes, embeddings or subject names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.serving import StartServer


def test_logs_are_json_lines_with_request_ids_and_no_payloads(
    start_server: StartServer, tmp_path: Path, lfw_photo: LfwPhoto
) -> None:
    server = start_server(tmp_path / "gallery", auth="off", log_level="INFO")
    photo = lfw_photo("Donald_Rumsfeld", 39)
    with server.client() as http:
        enrolled = http.post(
            "/enroll",
            data={"subject": "Private Person"},
            files=[("images", (photo.name, photo.read_bytes()))],
            headers={"X-Request-ID": "trace-enroll-1"},
        )
        assert enrolled.status_code == 201
        embedded = http.post(
            "/embed",
            files={"image": (photo.name, photo.read_bytes())},
            headers={"X-Request-ID": "trace-embed-1"},
        )
        assert embedded.status_code == 200
        embedding = embedded.json()["faces"][0]["embedding"]
        assert http.get("/subjects/Private Person").status_code == 200
    server.stop()

    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    access = {
        entry.get("request_id"): entry for entry in entries if entry["logger"] == "app.access"
    }
    assert access["trace-enroll-1"]["route"] == "/enroll"
    assert access["trace-enroll-1"]["status"] == 201
    assert access["trace-embed-1"]["route"] == "/embed"
    assert isinstance(access["trace-embed-1"]["duration_ms"], float)
    assert any(entry["logger"].startswith("uvicorn") for entry in entries)

    text = server.log()
    assert "Private Person" not in text
    assert not any(f"{value:.6f}"[:8] in text for value in embedding[:8])
    assert photo.read_bytes()[200:232].hex() not in text
