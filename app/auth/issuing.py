"""What every key store does alike when it issues a key: check the name and scope,
draw the secret, keep only its hash. Pure: no storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.auth.keys import ALL_COLLECTIONS, ApiKey, hash_token, new_token
from app.errors import InvalidRequest

NAME_MAX_LENGTH = 64


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    token: str  # shown once to the caller, never stored
    stored_hash: str


def validate_key_name(name: str) -> str:
    clean = name.strip()
    if not clean or len(clean) > NAME_MAX_LENGTH or not clean.isprintable():
        raise InvalidRequest(
            f"a key name must be 1 to {NAME_MAX_LENGTH} printable characters", field="name"
        )
    return clean


def issue_key(*, name: str, collections: Sequence[str], admin: bool, now: datetime) -> NewKey:
    """A new key: admin keys reach every collection, others need at least one."""
    clean_name = validate_key_name(name)
    scope = tuple(dict.fromkeys(collections))  # de-duplicated, order kept
    if not scope and not admin:
        raise InvalidRequest("a key needs at least one collection ('*' for all)")
    key_id, token = new_token()
    key = ApiKey(
        key_id=key_id,
        name=clean_name,
        admin=admin,
        collections=(ALL_COLLECTIONS,) if admin else scope,
        created_at=now,
    )
    return NewKey(key=key, token=token, stored_hash=hash_token(token))
