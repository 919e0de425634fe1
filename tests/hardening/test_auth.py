"""API keys: lifecycle, collection scopes, revocation, hashed storage, rate limits, the
first-start admin key, the open endpoints, and FACEREC_AUTH=off."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.auth.bootstrap import FIRST_KEY_BANNER
from app.auth.dependencies import authorize_websocket
from app.auth.guard import Guard
from app.auth.store import KEYS_FILENAME, SqliteKeyStore
from app.errors import FaceRecError
from app.main import create_app

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.hardening.conftest import SettingsFactory
    from tests.serving import StartServer

RUMSFELD = ("Donald_Rumsfeld", 39)
BUSH = ("George_W_Bush", 7)


@pytest.fixture(scope="module")
def secured(
    secure_settings: SettingsFactory,
    admin_token: Callable[[Path], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, str, Path]]:
    """A started app with API keys on (no rate limit), its admin key and data dir."""
    data_dir = tmp_path_factory.mktemp("gallery")
    token = admin_token(data_dir)
    app = create_app(secure_settings(data_dir, rate_limit_per_second=0))
    with TestClient(app) as client:
        yield client, token, data_dir


def auth(token: str) -> dict[str, str]:
    return {"X-API-Key": token}


def create_key(client: TestClient, admin: str, *collections: str, name: str = "k") -> str:
    response = client.post(
        "/keys", json={"name": name, "collections": list(collections)}, headers=auth(admin)
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["api_key"]
    return token


def enroll(client: TestClient, token: str, collection: str, photo: Path) -> httpx.Response:
    return client.post(
        "/enroll",
        params={"collection": collection},
        data={"subject": "Rumsfeld"},
        files=[("images", (photo.name, photo.read_bytes()))],
        headers=auth(token),
    )


# --- lifecycle ----------------------------------------------------------------------------


def test_a_created_key_is_shown_once_listed_without_secret_and_dies_when_revoked(
    secured: tuple[TestClient, str, Path], lfw_photo: LfwPhoto
) -> None:
    client, admin, _ = secured
    created = client.post(
        "/keys", json={"name": "kiosk", "collections": ["lobby"]}, headers=auth(admin)
    )
    assert created.status_code == 201, created.text
    body = created.json()
    token, key_id = body["api_key"], body["key_id"]
    assert token.startswith(f"frk_{key_id}_")
    assert body["collections"] == ["lobby"]
    assert body["admin"] is False
    assert body["revoked_at"] is None

    assert enroll(client, token, "lobby", lfw_photo(*RUMSFELD)).status_code == 201
    listing = client.get("/keys", headers=auth(admin)).json()["items"]
    (listed,) = [item for item in listing if item["key_id"] == key_id]
    assert "api_key" not in listed
    assert token not in client.get("/keys", headers=auth(admin)).text

    revoked = client.delete(f"/keys/{key_id}", headers=auth(admin))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    after = client.get("/subjects", params={"collection": "lobby"}, headers=auth(token))
    assert after.status_code == 401
    assert after.json()["code"] == "unauthorized"
    listing = client.get("/keys", headers=auth(admin)).json()["items"]
    assert [item["revoked_at"] for item in listing if item["key_id"] == key_id] != [None]


def test_revoking_is_idempotent_and_unknown_keys_are_404(
    secured: tuple[TestClient, str, Path],
) -> None:
    client, admin, _ = secured
    key_id = client.post(
        "/keys", json={"name": "temp", "collections": ["x"]}, headers=auth(admin)
    ).json()["key_id"]
    first = client.delete(f"/keys/{key_id}", headers=auth(admin)).json()
    second = client.delete(f"/keys/{key_id}", headers=auth(admin))
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first["revoked_at"]
    missing = client.delete("/keys/0123456789abcdef", headers=auth(admin))
    assert missing.status_code == 404
    assert missing.json()["code"] == "key_not_found"


def test_the_last_admin_key_cannot_be_revoked(secured: tuple[TestClient, str, Path]) -> None:
    client, admin, _ = secured
    admins = [
        item
        for item in client.get("/keys", headers=auth(admin)).json()["items"]
        if item["admin"] and item["revoked_at"] is None
    ]
    assert len(admins) == 1
    response = client.delete(f"/keys/{admins[0]['key_id']}", headers=auth(admin))
    assert response.status_code == 409
    assert response.json()["code"] == "last_admin_key"


def test_a_second_admin_key_can_manage_keys_and_then_revoke_the_first(
    secure_settings: SettingsFactory, admin_token: Callable[[Path], str], tmp_path: Path
) -> None:
    first = admin_token(tmp_path)
    with TestClient(create_app(secure_settings(tmp_path))) as client:
        second = client.post(
            "/keys", json={"name": "ops", "admin": True}, headers=auth(first)
        ).json()
        assert second["collections"] == ["*"]
        first_id = first.split("_")[1]
        revoked = client.delete(f"/keys/{first_id}", headers=auth(second["api_key"]))
        assert revoked.status_code == 200
        assert client.get("/keys", headers=auth(first)).status_code == 401
        assert client.get("/keys", headers=auth(second["api_key"])).status_code == 200


# --- scopes -------------------------------------------------------------------------------


def test_a_key_reaches_only_its_own_collections(
    secured: tuple[TestClient, str, Path], lfw_photo: LfwPhoto
) -> None:
    client, admin, _ = secured
    alpha = create_key(client, admin, "alpha")
    beta = create_key(client, admin, "beta")
    photo = lfw_photo(*RUMSFELD)
    assert enroll(client, alpha, "alpha", photo).status_code == 201
    assert enroll(client, beta, "beta", photo).status_code == 201

    files = {"image": (photo.name, photo.read_bytes())}
    forbidden = [
        enroll(client, alpha, "beta", photo),
        client.post("/identify", params={"collection": "beta"}, files=files, headers=auth(alpha)),
        client.get("/subjects", params={"collection": "beta"}, headers=auth(alpha)),
        client.get("/subjects/Rumsfeld", params={"collection": "beta"}, headers=auth(alpha)),
        client.delete("/subjects/Rumsfeld", params={"collection": "beta"}, headers=auth(alpha)),
        client.delete("/faces/abc", params={"collection": "beta"}, headers=auth(alpha)),
        client.post(
            "/verify",
            params={"collection": "beta"},
            data={"subject": "Rumsfeld"},
            files=files,
            headers=auth(alpha),
        ),
        # no collection parameter means "default", which alpha does not hold either
        client.get("/subjects", headers=auth(alpha)),
        client.get("/keys", headers=auth(alpha)),
        client.post("/keys", json={"name": "mine", "collections": ["alpha"]}, headers=auth(alpha)),
    ]
    for response in forbidden:
        assert response.status_code == 403, (response.request.url, response.text)
        assert response.json()["code"] == "forbidden"
    # beta's subject is untouched, and alpha still sees its own
    beta_view = client.get("/subjects", params={"collection": "beta"}, headers=auth(beta))
    assert beta_view.json()["total"] == 1
    alpha_view = client.post(
        "/identify", params={"collection": "alpha"}, files=files, headers=auth(alpha)
    )
    assert alpha_view.status_code == 200
    assert alpha_view.json()["faces"][0]["match"]["subject"] == "Rumsfeld"


def test_gallery_free_operations_need_any_valid_key_but_no_scope(
    secured: tuple[TestClient, str, Path], lfw_photo: LfwPhoto
) -> None:
    client, admin, _ = secured
    scoped = create_key(client, admin, "somewhere")
    photo_a, photo_b = lfw_photo(*RUMSFELD), lfw_photo(*BUSH)
    embed = client.post(
        "/embed", files={"image": (photo_a.name, photo_a.read_bytes())}, headers=auth(scoped)
    )
    assert embed.status_code == 200
    pair = client.post(
        "/verify",
        files={
            "image_a": (photo_a.name, photo_a.read_bytes()),
            "image_b": (photo_b.name, photo_b.read_bytes()),
        },
        headers=auth(scoped),
    )
    assert pair.status_code == 200
    assert pair.json()["match"] is False
    assert client.post("/embed", files={"image": ("a", b"x")}).status_code == 401


def test_a_wildcard_key_reaches_every_collection(
    secured: tuple[TestClient, str, Path], lfw_photo: LfwPhoto
) -> None:
    client, admin, _ = secured
    everywhere = create_key(client, admin, "*")
    for collection in ("one", "two", "default"):
        assert enroll(client, everywhere, collection, lfw_photo(*RUMSFELD)).status_code == 201


# --- rejected keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("secret", id="garbage"),
        pytest.param("frk_0123456789abcdef_" + "A" * 43, id="unknown-id"),
        pytest.param("frk_0123456789abcdef_" + "A" * 42, id="short-secret"),
        pytest.param("Bearer frk_0123456789abcdef_" + "A" * 43, id="bearer-prefix"),
        pytest.param("x" * 4000, id="huge"),
    ],
)
def test_missing_or_invalid_keys_are_401(
    secured: tuple[TestClient, str, Path], header: str | None
) -> None:
    client, _, _ = secured
    headers = None if header is None else {"X-API-Key": header}
    response = client.get("/subjects", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_a_right_id_with_a_wrong_secret_is_401(secured: tuple[TestClient, str, Path]) -> None:
    client, admin, _ = secured
    token = create_key(client, admin, "default")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert client.get("/subjects", headers=auth(token)).status_code == 200
    assert client.get("/subjects", headers=auth(forged)).status_code == 401


def test_the_secret_is_stored_only_as_a_hash(secured: tuple[TestClient, str, Path]) -> None:
    client, admin, data_dir = secured
    token = create_key(client, admin, "vault", name="vault")
    key_id, secret = token.split("_")[1], token.split("_", 2)[2]
    with closing(sqlite3.connect(f"file:{data_dir / KEYS_FILENAME}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT * FROM api_keys").fetchall()
        (stored_hash,) = db.execute(
            "SELECT key_hash FROM api_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
    assert stored_hash == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    dumped = repr(rows)
    assert secret not in dumped
    assert admin.split("_", 2)[2] not in dumped
    # nor anywhere else on disk (database pages, write-ahead log, gallery)
    for path in data_dir.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path.name


def test_open_endpoints_need_no_key(secured: tuple[TestClient, str, Path]) -> None:
    client, _, _ = secured
    for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert client.get("/").status_code not in (401, 403)


def test_the_schema_declares_the_api_key_scheme(secured: tuple[TestClient, str, Path]) -> None:
    client, _, _ = secured
    schema = client.get("/openapi.json").json()
    (scheme,) = schema["components"]["securitySchemes"].values()
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert "security" in schema["paths"]["/identify"]["post"]
    assert "security" not in schema["paths"]["/health"]["get"]


# --- rate limits --------------------------------------------------------------------------


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    secure_settings: SettingsFactory, admin_token: Callable[[Path], str], tmp_path: Path
) -> None:
    admin = admin_token(tmp_path)
    # A budget that does not refill during the test: 3 requests, then one per ~17 minutes.
    settings = secure_settings(tmp_path, rate_limit_per_second=0.001, rate_limit_burst=3)
    with TestClient(create_app(settings)) as client:
        other = create_key(client, admin, "default")  # the admin's 1st request
        statuses = [client.get("/subjects", headers=auth(admin)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = client.get("/subjects", headers=auth(admin))
        assert limited.json()["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # budgets are per key
        assert client.get("/subjects", headers=auth(other)).status_code == 200
        # the open endpoints are not charged
        assert client.get("/health").status_code == 200


# --- auth off -----------------------------------------------------------------------------


def test_with_auth_off_no_key_is_needed_and_key_management_says_so(
    secure_settings: SettingsFactory, tmp_path: Path, lfw_photo: LfwPhoto
) -> None:
    with TestClient(create_app(secure_settings(tmp_path, auth=False))) as client:
        photo = lfw_photo(*RUMSFELD)
        response = client.post(
            "/enroll",
            data={"subject": "Rumsfeld"},
            files=[("images", (photo.name, photo.read_bytes()))],
        )
        assert response.status_code == 201
        assert client.get("/subjects").json()["total"] == 1
        assert client.get("/subjects", headers={"X-API-Key": "whatever"}).status_code == 200
        keys = client.get("/keys")
        assert keys.status_code == 409
        assert keys.json()["code"] == "auth_disabled"
    assert not (tmp_path / "keys.sqlite3").exists()


# --- the first start (real server process) ------------------------------------------------


def test_the_first_start_prints_one_admin_key_once_and_it_survives_restarts(
    start_server: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "gallery"
    first = start_server(data_dir, auth="on")
    (token,) = first.printed_keys()
    assert first.log().count(FIRST_KEY_BANNER) == 1
    with first.client() as anonymous:
        assert anonymous.get("/subjects").status_code == 401
    with first.client(token) as admin:
        keys = admin.get("/keys")
        assert keys.status_code == 200
        assert [item["admin"] for item in keys.json()["items"]] == [True]
    first.stop()

    second = start_server(data_dir, auth="on")
    assert second.printed_keys() == []
    assert FIRST_KEY_BANNER not in second.log()
    with second.client(token) as admin:
        assert admin.get("/keys").status_code == 200


def test_auth_off_in_the_environment_serves_without_keys(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "gallery", auth="off")
    assert server.printed_keys() == []
    with server.client() as anonymous:
        assert anonymous.get("/subjects").status_code == 200


# --- the WebSocket handshake check ----------------------------------------------------------


def test_authorize_websocket_reads_the_header_or_the_query_parameter(tmp_path: Path) -> None:
    """The check /stream calls before accepting: 1008 with the error code otherwise."""
    store = SqliteKeyStore(tmp_path / KEYS_FILENAME)
    token = store.create(name="cam", collections=["lobby"], admin=False).token
    app = FastAPI()
    app.state.runtime = SimpleNamespace(guard=Guard(store))

    @app.websocket("/ws")
    async def handshake(websocket: WebSocket, collection: str = "default") -> None:
        try:
            authorize_websocket(websocket, collection)
        except FaceRecError as error:
            await websocket.close(code=1008, reason=error.code)
            return
        await websocket.accept()
        await websocket.send_text("welcome")
        await websocket.close()

    with TestClient(app) as client:
        with client.websocket_connect("/ws?collection=lobby", headers=auth(token)) as ws:
            assert ws.receive_text() == "welcome"
        with client.websocket_connect(f"/ws?collection=lobby&api_key={token}") as ws:
            assert ws.receive_text() == "welcome"
        for url, reason in [
            ("/ws?collection=lobby", "unauthorized"),
            ("/ws?collection=lobby&api_key=nope", "unauthorized"),
            (f"/ws?collection=hall&api_key={token}", "forbidden"),
        ]:
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(url):
                pass
            assert (refused.value.code, refused.value.reason) == (1008, reason)
    store.close()
