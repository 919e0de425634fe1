"""Gallery backends behind ``app.core.gallery.Gallery``; ``open_gallery`` picks one.

Only the composition root (``app.main``, ``app.cli``, the training tools' entry
points) calls ``open_gallery``; everything else receives a ``Gallery``.
"""

from __future__ import annotations

from pathlib import Path

from app.core.gallery import Gallery


def open_gallery(
    *, data_dir: Path, model_id: str, dim: int, database_url: str | None = None
) -> Gallery:
    """The embedded gallery in ``data_dir``, or the PostgreSQL one at ``database_url``."""
    if database_url:
        raise NotImplementedError("the PostgreSQL gallery backend is not built yet")
    from app.gallery.embedded import EmbeddedGallery

    return EmbeddedGallery(data_dir, model_id=model_id, dim=dim)


__all__ = ["Gallery", "open_gallery"]
