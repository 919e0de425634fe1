"""FastAPI side of the guard: the ``X-API-Key`` security scheme and its dependencies.

HTTP routes take ``Caller`` (any valid key), ``AuthorizedCollection`` (the
``collection`` query parameter, checked against the key's scope) or
``AdminCaller``. The WebSocket handshake has its own check (``app.api.stream_access``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security, WebSocket
from fastapi.security import APIKeyHeader

from app.api.access import KEY_ID_STATE, KEY_STATE
from app.api.deps import CollectionParam
from app.auth.guard import Guard, require_admin, require_collection
from app.auth.keys import ApiKey
from app.schemas import ErrorResponse

API_KEY_HEADER = "X-API-Key"
# A key sent in a URL query is refused (URLs get logged): /stream closes with 1008.
API_KEY_QUERY = "api_key"

api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An API key (frk_...). Admin keys manage keys; others are scoped to collections.",
)
ApiKeyHeader = Annotated[str | None, Security(api_key_scheme)]


def guard_of(request: Request | WebSocket) -> Guard:
    guard: Guard = request.app.state.runtime.guard
    return guard


async def authenticated(request: Request, token: ApiKeyHeader) -> ApiKey | None:
    """Any active key (charged to its rate limit once); None when auth is off.

    The access middleware (``app.api.access``) normally checked the key from the
    headers already and left it in the request state; this reuses it.
    """
    state = request.scope.get("state", {})
    if KEY_STATE in state:
        resolved: ApiKey | None = state[KEY_STATE]
        return resolved
    key = guard_of(request).authenticate(token)
    state = request.scope.setdefault("state", {})
    state[KEY_STATE] = key
    if key is not None:
        state[KEY_ID_STATE] = key.key_id  # for the access log
    return key


Caller = Annotated[ApiKey | None, Depends(authenticated)]


async def authorized_collection(caller: Caller, collection: CollectionParam = "default") -> str:
    """The ``collection`` query parameter, once the caller's key may use it."""
    require_collection(caller, collection)
    return collection


AuthorizedCollection = Annotated[str, Depends(authorized_collection)]


async def admin_caller(caller: Caller) -> ApiKey | None:
    require_admin(caller)
    return caller


AdminCaller = Annotated[ApiKey | None, Depends(admin_caller)]


def sees_gallery_detail(request: Request) -> bool:
    """Whether the caller of an open endpoint (/ready, /metrics) may see collection names
    and sizes: an admin key checked by the access middleware, or auth off."""
    guard = guard_of(request)
    if not guard.enabled:
        return True
    key = request.scope.get("state", {}).get(KEY_STATE)
    return isinstance(key, ApiKey) and key.admin


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# OpenAPI responses of every route behind a key.
ACCESS_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("unauthorized: missing, invalid or revoked X-API-Key"),
    403: _error("forbidden: the key may not use this collection"),
    429: _error("rate_limited: the key's budget is used up; see Retry-After"),
}
