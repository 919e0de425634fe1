"""Gallery backends behind ``app.core.gallery.Gallery``; ``open_gallery`` picks one.

Only the composition root (``app.main``, ``app.cli``, the training tools' entry
points) calls ``open_gallery``; everything else receives a ``Gallery``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.core.gallery import Gallery

if TYPE_CHECKING:
    from app.storage.postgres.database import Database


def open_gallery(
    *,
    data_dir: Path,
    model_id: str,
    dim: int,
    database_url: str | None = None,
    database: Database | None = None,
    ef_search: int | None = None,
    generation: int = 0,
) -> Gallery:
    """The embedded gallery in ``data_dir``, or the PostgreSQL one.

    PostgreSQL: on ``database`` when given (shared with the key store; its opener
    closes it), else at ``database_url`` (opened here, closed with the gallery).
    ``ef_search``: HNSW candidates per PostgreSQL search (default: the backend's).
    ``generation``: the PostgreSQL gallery generation to open (the active one); the
    embedded gallery's generation is its folder, ``data_dir``.
    """
    if database is not None or database_url:
        from app.storage.postgres import open_database

        owns = database is None
        if database is None:
            assert database_url is not None
            database = open_database(database_url)
        try:
            from app.gallery.postgres import PostgresGallery

            return PostgresGallery(
                database,
                model_id=model_id,
                dim=dim,
                ef_search=ef_search,
                owns_database=owns,
                generation=generation,
            )
        except BaseException:
            if owns:
                database.close()
            raise
    from app.gallery.embedded import EmbeddedGallery

    return EmbeddedGallery(data_dir, model_id=model_id, dim=dim)


__all__ = ["Gallery", "open_gallery"]
