"""API key management (admin keys only): create, list, revoke."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Request, status

from app.api.openapi import error_responses
from app.auth.dependencies import AdminCaller, guard_of
from app.auth.keys import ApiKey
from app.auth.keystore import KeyStore
from app.errors import AuthDisabled
from app.schemas import KeyCreate, KeyCreated, KeyList, KeyOut

router = APIRouter(prefix="/keys", tags=["keys"])
KEY_ERRORS: dict[int | str, dict[str, Any]] = error_responses(
    "unauthorized", "forbidden", "auth_disabled", "rate_limited"
)
KeyIdPath = Annotated[str, Path(max_length=64, description="the key id (16 hex digits)")]


def _store(request: Request) -> KeyStore:
    store = guard_of(request).store
    if store is None:
        raise AuthDisabled("API keys are off (FACEREC_AUTH=off); there are no keys to manage")
    return store


def _key(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "admin": key.admin,
        "collections": list(key.collections),
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses={**KEY_ERRORS, **error_responses("malformed_request", "invalid_request")},
    summary="Create an API key (its secret is shown only in this response)",
)
async def create_key(request: Request, _: AdminCaller, body: KeyCreate) -> KeyCreated:
    store = _store(request)
    issued = await anyio.to_thread.run_sync(
        lambda: store.create(name=body.name, collections=body.collections, admin=body.admin)
    )
    return KeyCreated(**_key(issued.key), api_key=issued.token)


@router.get("", response_model=KeyList, responses=KEY_ERRORS, summary="List API keys")
async def list_keys(request: Request, _: AdminCaller) -> KeyList:
    store = _store(request)
    keys = await anyio.to_thread.run_sync(store.list_keys)
    return KeyList(items=[KeyOut(**_key(key)) for key in keys])


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    responses={
        **KEY_ERRORS,
        **error_responses("key_not_found", "last_admin_key", "auth_disabled", "invalid_request"),
    },
    summary="Revoke an API key at once",
)
async def revoke_key(request: Request, _: AdminCaller, key_id: KeyIdPath) -> KeyOut:
    store = _store(request)
    key = await anyio.to_thread.run_sync(lambda: store.revoke(key_id))
    return KeyOut(**_key(key))
