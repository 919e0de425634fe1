"""API key values: format, hashing and scope. Pure functions, no storage.

A key reads ``frk_<key_id>_<secret>``: ``key_id`` is 16 hex digits that name the key
in listings, logs and ``DELETE /keys/{key_id}``; ``secret`` is 32 random bytes
(URL-safe base64, 43 characters). Only ``sha256`` of the whole key is stored. A
slow password hash would add nothing: 256 random bits cannot be guessed, and a
fast hash keeps the per-request check cheap. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

KEY_PREFIX = "frk"
# 8 random bytes name a key; 32 random bytes make it unguessable.
KEY_ID_BYTES = 8
SECRET_BYTES = 32
# The one collection pattern that means "every collection".
ALL_COLLECTIONS = "*"
_KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}_(?P<key_id>[0-9a-f]{{16}})_[A-Za-z0-9_-]{{43}}$")
_HASH_SCHEME = "sha256"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What the service knows about a key; never its secret."""

    key_id: str
    name: str
    admin: bool
    collections: tuple[str, ...]  # exact names, or (ALL_COLLECTIONS,)
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def can_access(self, collection: str) -> bool:
        return self.admin or ALL_COLLECTIONS in self.collections or collection in self.collections


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly created key with its secret: shown to its owner once, then forgotten."""

    key: ApiKey
    token: str


def new_token() -> tuple[str, str]:
    """A fresh ``(key_id, token)``."""
    key_id = secrets.token_hex(KEY_ID_BYTES)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def key_id_of(token: str) -> str | None:
    """The key id a well-formed token names, or None for anything else."""
    match = _KEY_PATTERN.match(token)
    return match["key_id"] if match else None


def hash_token(token: str) -> str:
    return f"{_HASH_SCHEME}:{hashlib.sha256(token.encode('ascii')).hexdigest()}"


def token_matches(token: str, stored_hash: str) -> bool:
    """Constant-time comparison of ``token`` against a stored ``hash_token`` value."""
    return hmac.compare_digest(hash_token(token).encode("ascii"), stored_hash.encode("ascii"))
