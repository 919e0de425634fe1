"""A read-only view of an embedded gallery's enrolled faces, beside the serving process.

The service holds its gallery directory's lock (one ``EmbeddedGallery`` per directory),
so an offline reader (``python -m training finetune|evaluate --gallery DATA_DIR``) does
not open a second one: ``GalleryReader`` reads the SQLite file through a read-only
connection instead. SQLite's WAL lets it read while the service writes, and it reads
inside one read transaction from open to close, so both passes of a reader (the
embeddings, then the crops) see the gallery as it was at one moment. It builds no
index, takes no lock, writes nothing and never migrates (``check_readable``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from app.core.gallery import EmbeddingBatch
from app.core.types import FaceRecord
from app.errors import GalleryUnavailable
from app.gallery.embedded import repository
from app.gallery.embedded.schema import DB_FILENAME, check_readable
from app.gallery.values import require_text

# Crops per query (~25 kB each): a page is a few MB.
_CROPS_PAGE = 256
_BUSY_TIMEOUT_MS = 5000


class GalleryReader:
    """The faces, embeddings and aligned crops of the gallery in ``path``, read only."""

    def __init__(self, path: Path, *, model_id: str, dim: int) -> None:
        db_path = path / DB_FILENAME
        if not db_path.is_file():
            raise GalleryUnavailable(f"no gallery database at {db_path}", path=str(db_path))
        self._model_id = model_id
        self._dim = dim
        try:
            connection = sqlite3.connect(
                f"{db_path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise GalleryUnavailable(
                f"cannot read the gallery {db_path}: {exc}", path=str(db_path)
            ) from None
        connection.row_factory = sqlite3.Row
        try:
            connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            connection.execute("BEGIN")  # one snapshot, from the first read to close
            check_readable(connection, db_path, model_id=model_id, dim=dim)
        except BaseException:
            connection.close()
            raise
        self._db: sqlite3.Connection | None = connection

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def export_embeddings(self, collection: str, *, batch_size: int) -> Iterator[EmbeddingBatch]:
        """Every face of a collection in insertion order, ``batch_size`` at a time."""
        require_text(collection, "collection")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for rows in repository.embedding_batches(
            self._connection(), collection, dim=self._dim, batch_size=batch_size
        ):
            yield EmbeddingBatch(
                subjects=rows.subjects, face_ids=rows.face_ids, embeddings=rows.embeddings
            )

    def aligned_crops(self, collection: str | None = None) -> Iterator[tuple[FaceRecord, bytes]]:
        """Every stored aligned crop (PNG) with its face, in insertion order."""
        if collection is not None:
            require_text(collection, "collection")
        after_id = 0
        while page := repository.aligned_crops_page(
            self._connection(), collection, after_id=after_id, limit=_CROPS_PAGE
        ):
            for _, record, png in page:
                yield record, png
            after_id = page[-1][0]

    def close(self) -> None:
        """End the read transaction and close; safe to call twice."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the gallery reader is closed")
        return self._db
