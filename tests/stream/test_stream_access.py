"""Stream credentials and the key re-checked while streaming (guard and store faked)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from starlette.websockets import WebSocket

from app.api.stream_access import StreamAccess, credentials_of, refusal
from app.auth.guard import Guard
from app.auth.keys import ApiKey
from app.errors import Forbidden, RateLimited, Unauthorized

KEY = ApiKey("0123456789abcdef", "cam", False, ("lobby",), datetime(2026, 1, 1, tzinfo=UTC))


def handshake(query: str = "", protocols: list[str] | None = None, **headers: str) -> WebSocket:
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/stream",
        "query_string": query.encode(),
        "headers": [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()],
        "subprotocols": protocols or [],
    }

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: dict[str, Any]) -> None:
        pass

    return WebSocket(scope, nothing, ignore)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("socket", "token", "subprotocol", "refused"),
    [
        (handshake(x_api_key="frk_h"), "frk_h", None, None),
        (handshake(protocols=["facerec.v1", "facerec.key.frk_p"]), "frk_p", "facerec.v1", None),
        (handshake(protocols=["facerec.v1"]), None, "facerec.v1", None),
        (handshake("api_key=frk_q"), None, None, "api_key_in_url"),
        (handshake("collection=a&api_key="), None, None, "api_key_in_url"),
        (handshake(protocols=["facerec.key.frk_p"]), "frk_p", None, "unauthorized"),
        (
            handshake(protocols=["facerec.v1", "facerec.key.a", "facerec.key.b"]),
            "a",
            "facerec.v1",
            "unauthorized",
        ),
        (
            handshake(protocols=["facerec.v1", "facerec.key.a"], x_api_key="b"),
            "b",
            "facerec.v1",
            "unauthorized",
        ),
    ],
)
def test_handshake_credentials(
    socket: WebSocket, token: str | None, subprotocol: str | None, refused: str | None
) -> None:
    credentials = credentials_of(socket)
    assert (credentials.token, credentials.subprotocol) == (token, subprotocol)
    reason = refusal(socket)
    assert (reason.split(":")[0] if reason else None) == refused


class FakeStore:
    """The key store's public ``authenticate``: answers change as the test says."""

    def __init__(self) -> None:
        self.key: ApiKey | None = KEY

    def authenticate(self, token: str) -> ApiKey | None:
        return self.key if token == "frk_good" else None


class FakeGuard(Guard):
    def __init__(self, store: FakeStore, limited: int = 0) -> None:
        super().__init__(store)  # type: ignore[arg-type]
        self.limited = limited
        self.charged = 0

    def authenticate(self, token: str | None) -> ApiKey | None:
        if self.limited:
            self.limited -= 1
            raise RateLimited("wait", retry_after_s=1)
        self.charged += 1
        return super().authenticate(token)


def test_a_revoked_key_or_a_narrowed_scope_fails_the_check() -> None:
    store = FakeStore()
    access = StreamAccess(FakeGuard(store), "frk_good", "lobby")
    access.check()  # valid
    store.key = replace(KEY, collections=("hall",))
    with pytest.raises(Forbidden):
        access.check()
    store.key = None
    with pytest.raises(Unauthorized):
        access.check()
    with pytest.raises(Unauthorized):
        StreamAccess(FakeGuard(FakeStore()), None, "lobby").check()


def test_a_frame_over_the_rate_budget_waits_for_it_instead_of_failing() -> None:
    guard = FakeGuard(FakeStore(), limited=3)
    access = StreamAccess(guard, "frk_good", "lobby")
    anyio.run(access.charge_frame)
    assert (guard.limited, guard.charged) == (0, 1)  # three refusals waited out, one charge


def test_with_auth_off_every_check_passes() -> None:
    access = StreamAccess(Guard(None), None, "lobby")
    assert access.open() is None
    access.check()
    anyio.run(access.charge_frame)
