"""PostgreSQL as the gallery and the key store share it (the ``postgres`` extra).

Importing this package needs no driver; ``open_database`` imports psycopg and says
which extra to install when it is missing, so the embedded install stays lean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.errors import GalleryUnavailable
from app.storage.postgres.options import DatabaseOptions

if TYPE_CHECKING:
    from app.storage.postgres.database import Database

INSTALL_HINT = "pip install 'facerec[cpu,postgres]'"


def open_database(url: str, options: DatabaseOptions | None = None) -> Database:
    """Connect to ``url``, apply the migrations, open the pool (see ``Database``)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in {"postgresql", "postgres"}:
        raise GalleryUnavailable(
            "FACEREC_DATABASE_URL must be a PostgreSQL URL, postgresql://user:password@host"
            f":port/database (its scheme is {scheme[:20]!r})"
        )
    try:
        from app.storage.postgres.database import Database
    except ImportError as exc:
        raise GalleryUnavailable(
            "FACEREC_DATABASE_URL is set, but the PostgreSQL driver is not installed "
            f"({exc.name} is missing): install the postgres extra, {INSTALL_HINT}",
            missing_module=exc.name,
        ) from exc
    return Database.open(url, options or DatabaseOptions())


__all__ = ["DatabaseOptions", "open_database"]
