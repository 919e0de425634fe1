"""The seam between the guard and where API keys are kept.

Two stores: ``app.auth.store.SqliteKeyStore`` (a file beside the embedded gallery)
and ``app.auth.pgstore.PostgresKeyStore`` (the database every replica shares).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from app.auth.keys import ApiKey, IssuedKey


class KeyStore(Protocol):
    """Create, list, revoke and check API keys. Thread-safe."""

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key ``token`` is, or None. From memory: safe on the event loop.

        May raise ``DatabaseUnavailable`` when the store cannot vouch for its memory
        (a shared store that lost contact with the others' changes).
        """
        ...

    def create(self, *, name: str, collections: Sequence[str], admin: bool) -> IssuedKey:
        """A new key, committed before it is returned (its secret is shown once)."""
        ...

    def create_first_admin(self, name: str = "admin") -> IssuedKey | None:
        """An admin key when the store has never held any key; None otherwise."""
        ...

    def list_keys(self) -> list[ApiKey]:
        """Every key ever created, revoked ones included, oldest first."""
        ...

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once; ``KeyNotFound``, ``LastAdminKey`` (never zero admins)."""
        ...

    def close(self) -> None: ...
