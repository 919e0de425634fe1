"""Who may stream: the handshake's credentials, and the key re-checked while streaming.

Browsers cannot set headers on a WebSocket handshake, and a key in the URL ends
up in access logs, proxies and browser history. So ``/stream`` takes its key

- in the ``X-API-Key`` header (non-browser clients), or
- as a WebSocket subprotocol: the client offers ``facerec.v1`` and
  ``facerec.key.<api key>`` (``new WebSocket(url, ["facerec.v1", "facerec.key." + key])``);
  the server selects ``facerec.v1``, so the key is never echoed back.

A key in the query string (``api_key=``) is refused, whatever its value, and never
read. While a stream is open its key is checked again before every frame (and
that frame is charged to the key's rate budget) and at least every
``key_check_s`` seconds when no frame comes: a revoked key, or one no longer
allowed the collection, ends its streams with 1008. Only ``Guard`` and
``KeyStore`` public calls are used, so this holds for any key store behind them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from starlette.websockets import WebSocket

from app.auth.dependencies import API_KEY_HEADER, API_KEY_QUERY
from app.auth.guard import Guard, require_collection
from app.auth.keys import ApiKey
from app.errors import RateLimited, Unauthorized

SUBPROTOCOL = "facerec.v1"
KEY_SUBPROTOCOL_PREFIX = "facerec.key."
# A stream whose key ran out of rate budget polls for the next token this often;
# the frames meanwhile are dropped (latest wins), so the stream runs at the budget.
RATE_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str | None
    subprotocol: str | None  # the one to accept; None when none was offered


def credentials_of(websocket: WebSocket) -> Credentials:
    """The handshake's key and the subprotocol to answer with. Refusals wait until the
    socket is accepted (``refusal``), so that a browser sees the reason."""
    offered: Sequence[str] = websocket.scope.get("subprotocols") or ()
    prefix = KEY_SUBPROTOCOL_PREFIX
    keys = [p.removeprefix(prefix) for p in offered if p.startswith(prefix)]
    header = websocket.headers.get(API_KEY_HEADER)
    token = header or (keys[0] if keys else None)
    return Credentials(token=token, subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)


def refusal(websocket: WebSocket) -> str | None:
    """The close reason (code 1008) when the handshake's credentials are refused before any
    key is looked up; None when they may be checked."""
    if API_KEY_QUERY in websocket.query_params:
        return (
            "api_key_in_url: never put an API key in a URL; send it in the X-API-Key "
            f"header or as the subprotocol {KEY_SUBPROTOCOL_PREFIX}<key>"
        )
    offered: Sequence[str] = websocket.scope.get("subprotocols") or ()
    keys = {p for p in offered if p.startswith(KEY_SUBPROTOCOL_PREFIX)}
    header = websocket.headers.get(API_KEY_HEADER)
    if len(keys) > 1 or (keys and header is not None):
        return "unauthorized: send one API key, in the header or in a subprotocol"
    if keys and SUBPROTOCOL not in offered:
        return f"unauthorized: offer the {SUBPROTOCOL} subprotocol beside the key"
    return None


class StreamAccess:
    """The stream's key, checked again while the stream runs."""

    def __init__(self, guard: Guard, token: str | None, collection: str) -> None:
        self._guard = guard
        self._token = token
        self._collection = collection

    def open(self) -> ApiKey | None:
        """The handshake: authenticate (charged once) and authorise the collection."""
        return self._guard.authorize(self._token, collection=self._collection)

    async def charge_frame(self) -> None:
        """Before each frame: the key must still be valid for the collection, and the frame
        is charged to its rate budget, waiting for budget when it is used up."""
        while True:
            try:
                self._guard.authorize(self._token, collection=self._collection)
                return
            except RateLimited:
                await anyio.sleep(RATE_POLL_S)

    def check(self) -> None:
        """Without charging: raises ``Unauthorized`` (revoked) or ``Forbidden`` (scope)."""
        store = self._guard.store
        if store is None:
            return
        key = store.authenticate(self._token) if self._token else None
        if key is None:
            raise Unauthorized("the API key is invalid or revoked")
        require_collection(key, self._collection)
