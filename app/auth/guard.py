"""Who may do what: authentication, rate limits and collection scopes, without HTTP.

``Guard.authorize`` returns the caller's ``ApiKey``, or None when the service
runs with FACEREC_AUTH=off (every caller may do everything), and raises
``Unauthorized`` (401), ``RateLimited`` (429) or ``Forbidden`` (403).
"""

from __future__ import annotations

import math

from app.auth.keys import ApiKey
from app.auth.keystore import KeyStore
from app.auth.ratelimit import RateLimiter
from app.errors import Forbidden, RateLimited, Unauthorized


class Guard:
    def __init__(self, store: KeyStore | None, limiter: RateLimiter | None = None) -> None:
        self.store = store
        self.limiter = limiter

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def authenticate(self, token: str | None) -> ApiKey | None:
        """The caller's key (None with auth off); one request is charged to its budget."""
        if self.store is None:
            return None
        if not token:
            raise Unauthorized("send an API key in the X-API-Key header")
        key = self.store.authenticate(token)
        if key is None:
            raise Unauthorized("the API key is invalid or revoked")
        if self.limiter is not None:
            wait_s = self.limiter.acquire(key.key_id)
            if wait_s > 0:
                raise RateLimited(
                    f"rate limit of key {key.key_id} reached; retry in {wait_s:.2f} s",
                    retry_after_s=math.ceil(wait_s),
                )
        return key

    def authorize(
        self, token: str | None, *, collection: str | None = None, admin: bool = False
    ) -> ApiKey | None:
        key = self.authenticate(token)
        if admin:
            require_admin(key)
        if collection is not None:
            require_collection(key, collection)
        return key


def require_collection(key: ApiKey | None, collection: str) -> None:
    """Raise ``Forbidden`` unless ``key`` (None: auth off) may use ``collection``."""
    if key is not None and not key.can_access(collection):
        raise Forbidden(
            f"API key {key.key_id} is not allowed collection {collection!r}",
            key_id=key.key_id,
            collection=collection,
        )


def require_admin(key: ApiKey | None) -> None:
    if key is not None and not key.admin:
        raise Forbidden("managing API keys needs an admin key", key_id=key.key_id)
