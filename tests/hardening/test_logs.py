"""Structured logs of a real server process with API keys on: one JSON object per line,
request ids, and never a key secret, a query string, image bytes, embeddings or subject
names; a WebSocket is logged once, by the app, without its URL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.serving import Server, StartServer

# A query string anywhere in a line: "?name=" (the redaction leaves "?***").
QUERY_STRING = re.compile(r"\?[A-Za-z_][A-Za-z0-9_]*=")


def _secrets(*tokens: str) -> list[str]:
    """What must never be logged: each whole token and its secret part."""
    return [part for token in tokens for part in (token, token.split("_", 2)[2])]


def _open_stream(server: Server, query: str) -> None:
    """Open /stream, send nothing, and let the server close it (or close it ourselves)."""
    url = f"ws://127.0.0.1:{server.port}/stream?{query}"
    try:
        with ws_connect(url, open_timeout=30, close_timeout=5) as socket:
            socket.recv(timeout=2)
    except (ConnectionClosed, TimeoutError):
        pass
    except OSError as exc:  # a refused handshake (HTTP 403) is an answer too
        if "403" not in str(exc):
            raise


@pytest.fixture(params=["INFO", "DEBUG"])
def busy_server_log(
    start_server: StartServer, tmp_path: Path, lfw_photo: LfwPhoto, request: pytest.FixtureRequest
) -> tuple[str, list[str], list[float]]:
    """Exercise every way a key can travel, then stop the server; its log, the secrets
    that went by, and an embedding the server returned. INFO is the default level; at
    DEBUG uvicorn and the websockets library log handshakes with their headers."""
    server = start_server(tmp_path / "gallery", auth="on", log_level=request.param)
    (admin,) = server.printed_keys()
    photo = lfw_photo("Donald_Rumsfeld", 39)
    with server.client(admin) as http:
        created = http.post(
            "/keys",
            json={"name": "camera", "collections": ["lobby"]},
            headers={"X-Request-ID": "trace-key-1"},
        )
        assert created.status_code == 201
        scoped = created.json()["api_key"]
    with server.client(scoped) as http:
        enrolled = http.post(
            "/enroll",
            params={"collection": "lobby"},
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
        assert http.get("/subjects/Private Person", params={"collection": "lobby"}).is_success
    with server.client() as anonymous:
        in_query = anonymous.get("/subjects", params={"collection": "lobby", "api_key": scoped})
        assert in_query.status_code == 401  # HTTP routes read keys from the header only
        forged = scoped[:-6] + "forged"
        assert anonymous.get("/subjects", headers={"X-API-Key": forged}).status_code == 401
    _open_stream(server, f"collection=lobby&api_key={scoped}")
    _open_stream(server, "collection=lobby")
    _open_stream(server, f"collection=elsewhere&api_key={scoped}")
    server.stop()
    return server.log(), _secrets(admin, scoped, forged), embedded.json()["faces"][0]["embedding"]


def test_no_line_holds_a_key_secret_a_query_string_or_a_payload_and_lines_are_json(
    busy_server_log: tuple[str, list[str], list[float]], lfw_photo: LfwPhoto
) -> None:
    text, secrets, embedding = busy_server_log
    # The banner (stderr, not logging) is the one place the first key is shown.
    banner_end = text.index("=" * 72, text.index("FIRST ADMIN API KEY")) + 72
    logged = text[banner_end:]
    for secret in secrets:
        assert secret not in logged
    assert QUERY_STRING.search(logged) is None, QUERY_STRING.search(logged)
    assert "api_key=" not in logged
    assert "[accepted]" not in logged
    assert "Private Person" not in logged
    assert not any(f"{value:.6f}"[:8] in logged for value in embedding[:8])
    photo = lfw_photo("Donald_Rumsfeld", 39)
    assert photo.read_bytes()[200:232].hex() not in logged

    # Lines are JSON with request ids, and the app logs each WebSocket once.
    lines = [line for line in text.splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]  # every logged line is one JSON object
    access = {
        entry.get("request_id"): entry for entry in entries if entry["logger"] == "app.access"
    }
    assert access["trace-enroll-1"]["route"] == "/enroll"
    assert access["trace-enroll-1"]["status"] == 201
    assert access["trace-enroll-1"]["key_id"]
    assert access["trace-embed-1"]["route"] == "/embed"
    assert isinstance(access["trace-embed-1"]["duration_ms"], float)
    assert access["trace-key-1"]["route"] == "/keys"
    sockets = [e for e in entries if e["logger"] == "app.access" and e.get("method") == "WS"]
    assert len(sockets) == 3
    assert {e["route"] for e in sockets} == {"/stream"}
    assert any(entry["logger"].startswith("uvicorn") for entry in entries)
