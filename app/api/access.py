"""Authentication from the request headers, before anything is read or reserved.

Pure ASGI, outside every other limit: a request without a valid ``X-API-Key`` gets
its 401 (429 over the key's rate, 403 outside its scope) from the headers alone,
however large a body it declares, and never takes an admission slot, a body read
or an inference turn. The key found is left in ``scope["state"]`` for the route
dependencies (``app.auth.dependencies``) and becomes the request's tenant for the
fair share of inference (``app.api.limits``).

Which paths need what (``access_for``):

* open, key ignored: ``/health``, ``/``, ``/manage``, ``/static/...``, ``/docs`` (and
  ``/docs/assets/...``), ``/redoc``, ``/openapi.json``;
* key optional (a key sent must be valid; an admin key sees more): ``/ready``,
  ``/metrics``;
* admin key: ``/keys`` and below;
* collection scope checked here too: ``/enroll``, ``/identify``, ``/subjects...``,
  ``/faces/...`` (and its crop) (``collection`` query parameter, ``default`` when absent; 422 when
  it is not a collection name), and ``/verify`` when it names a ``collection``;
* any other path: a valid key (so unknown paths reveal nothing to anonymous callers).

WebSocket handshakes are authenticated by the stream route itself.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import COLLECTION_PATTERN
from app.api.handlers import retry_headers, status_for
from app.api.limits import CLOSE, send_error, tenant_var
from app.auth.guard import Guard, require_admin, require_collection
from app.auth.keys import ApiKey
from app.errors import FaceRecError, InvalidRequest

# scope["state"] entries: the resolved key (ApiKey or None), and its id for the access log.
KEY_STATE = "api_key"
KEY_ID_STATE = "key_id"
DEFAULT_COLLECTION = "default"
_OPEN_PATHS = frozenset({"/", "/manage", "/health", "/docs", "/docs/oauth2-redirect", "/redoc"})
_OPEN_PREFIXES = ("/static/", "/docs/assets/")
_OPEN_PATHS |= {"/openapi.json"}
_OPTIONAL_PATHS = frozenset({"/ready", "/metrics"})
# (method, path) of the routes bound to the ``collection`` parameter; other methods on
# these paths only need a key (and get the router's 405).
_COLLECTION_ROUTES = frozenset({("POST", "/enroll"), ("POST", "/identify"), ("GET", "/subjects")})
_COLLECTION_PREFIXES = {
    "/subjects/": frozenset({"GET", "DELETE"}),
    "/faces/": frozenset({"GET", "DELETE"}),
}
_COLLECTION_NAME = re.compile(COLLECTION_PATTERN)


class Access(enum.Enum):
    OPEN = "open"
    OPTIONAL = "optional"
    KEY = "key"
    COLLECTION = "collection"
    ADMIN = "admin"


def access_for(method: str, path: str, query: dict[str, list[str]]) -> Access:
    if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
        return Access.OPEN
    if path in _OPTIONAL_PATHS:
        return Access.OPTIONAL
    if path == "/keys" or path.startswith("/keys/"):
        return Access.ADMIN
    if (method, path) in _COLLECTION_ROUTES:
        return Access.COLLECTION
    if any(path.startswith(p) and method in m for p, m in _COLLECTION_PREFIXES.items()):
        return Access.COLLECTION
    if (method, path) == ("POST", "/verify") and "collection" in query:
        return Access.COLLECTION
    return Access.KEY


class AccessMiddleware:
    def __init__(self, app: ASGIApp, guard: Callable[[], Guard | None], header: str) -> None:
        self.app = app
        self.guard = guard
        self.header = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard() if scope["type"] == "http" else None
        if guard is None or not guard.enabled:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root:
            path = path.removeprefix(root)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        access = access_for(scope["method"], path, query)
        token = Headers(scope=scope).get(self.header)
        if access is Access.OPEN or (access is Access.OPTIONAL and token is None):
            await self.app(scope, receive, send)
            return
        try:
            key = _check(guard, access, token, query)
        except FaceRecError as error:
            await send_error(
                scope,
                receive,
                send,
                status=status_for(error),
                code=error.code,
                message=error.message,
                headers={**(retry_headers(error) or {}), **CLOSE},
            )
            return
        state = scope.setdefault("state", {})
        state[KEY_STATE] = key
        if key is not None:
            state[KEY_ID_STATE] = key.key_id
        reset = tenant_var.set(key.key_id if key is not None else None)
        try:
            await self.app(scope, receive, send)
        finally:
            tenant_var.reset(reset)


def _check(
    guard: Guard, access: Access, token: str | None, query: dict[str, list[str]]
) -> ApiKey | None:
    key = guard.authenticate(token)
    if access is Access.ADMIN:
        require_admin(key)
    elif access is Access.COLLECTION:
        # The last value is the one FastAPI binds to the parameter.
        collection = query.get("collection", [DEFAULT_COLLECTION])[-1]
        if not _COLLECTION_NAME.match(collection):
            raise InvalidRequest(
                "invalid request: collection must be 1 to 64 letters, digits, '_', '.' or "
                "'-', starting with a letter or digit",
                field="collection",
            )
        require_collection(key, collection)
    return key
