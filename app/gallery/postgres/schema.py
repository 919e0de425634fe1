"""Binding a PostgreSQL gallery to one recognizer, and the HNSW index that goes with it.

The tables come from the migrations (``app/storage/postgres/migrations``). The
first gallery opened on a database records its ``model_id`` and ``dim`` in
``facerec_meta``, fixes the embedding column to ``vector(dim)`` and creates the
HNSW index; every later open checks them (``GalleryModelMismatch``).

The index: HNSW on ``embedding::halfvec(dim)`` with ``halfvec_ip_ops`` (inner
product, = cosine on unit vectors). Chosen by measurement (``bench/pgvector_types.py``,
docs/gallery.md): on face embeddings the half-precision graph finds the same
neighbours as a full-precision one, at half the size, built and searched faster.
The column itself stays float32, so reported similarities and exports are exact.
"""

from __future__ import annotations

from typing import Any

import psycopg

from app.errors import GalleryModelMismatch, GalleryUnavailable
from app.storage.sqlite import format_timestamp, utc_now

INDEX_NAME = "faces_embedding_hnsw"
# pgvector's HNSW limit for halfvec.
MAX_INDEXED_DIM = 4000
# Graph settings, by measurement (bench/pgvector_types.py, docs/gallery.md): on face
# embeddings at 20k faces and ef_search 100, pgvector's defaults (16, 64) missed the
# exact top face for 2.2% of probes, (32, 128) for none, at 4.5x the build time and
# 1.4x the query time.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128


def index_expression(dim: int) -> str:
    """The indexed expression; a search must ORDER BY exactly this to use the index."""
    return f"(embedding::halfvec({int(dim)}))"


def index_ddl(dim: int) -> str:
    """The statement that creates the search index (also after a bulk load without it)."""
    return (
        f"CREATE INDEX {INDEX_NAME} ON faces USING hnsw ({index_expression(dim)} halfvec_ip_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )


def bind_model(connection: psycopg.Connection[Any], *, model_id: str, dim: int, where: str) -> None:
    """Record the model of a new gallery, or check an existing one's. Call it inside
    ``Database.setup_transaction`` (replicas opening together take turns)."""
    if not 0 < dim <= MAX_INDEXED_DIM:
        raise ValueError(f"dim must be 1..{MAX_INDEXED_DIM} for the HNSW index, got {dim}")
    meta = dict(connection.execute("SELECT key, value FROM facerec_meta").fetchall())
    if not meta:
        _bind(connection, model_id=model_id, dim=dim)
        return
    stored_model, stored_dim = meta.get("model_id", ""), meta.get("dim", "")
    if not stored_model or not stored_dim.isdigit():
        raise GalleryUnavailable(
            f"the gallery database {where} has a damaged facerec_meta table ({meta!r})",
            database=where,
        )
    if stored_model == model_id and int(stored_dim) == dim:
        return
    raise GalleryModelMismatch(
        f"The gallery database {where} holds embeddings of model {stored_model!r} "
        f"(dim {stored_dim}), but the loaded recognizer is {model_id!r} (dim {dim}). "
        "Embeddings of different models are not comparable: load the gallery's model, "
        "re-enroll the gallery with the loaded one, or point FACEREC_DATABASE_URL at "
        "another database.",
        gallery_model_id=stored_model,
        gallery_dim=stored_dim,
        loaded_model_id=model_id,
        loaded_dim=dim,
    )


def _bind(connection: psycopg.Connection[Any], *, model_id: str, dim: int) -> None:
    (faces,) = connection.execute("SELECT count(*) FROM faces").fetchone() or (0,)
    if faces:
        raise GalleryUnavailable(
            "the faces table holds rows but facerec_meta names no model; restore the "
            "meta rows or start from an empty database"
        )
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO facerec_meta (key, value) VALUES (%s, %s)",
            [
                ("model_id", model_id),
                ("dim", str(dim)),
                ("created_at", format_timestamp(utc_now())),
            ],
        )
    connection.execute(f"ALTER TABLE faces ALTER COLUMN embedding TYPE vector({int(dim)})")
    connection.execute(index_ddl(dim))


def check_generation(
    connection: psycopg.Connection[Any], generation: int, *, model_id: str, dim: int
) -> None:
    """A gallery opened on generation n >= 1 must name the recognizer its row records."""
    row = connection.execute(
        "SELECT model_id, dim, state FROM gallery_generations WHERE number = %s", (generation,)
    ).fetchone()
    if row is None or row[2] not in ("copying", "ready"):
        raise GalleryUnavailable(
            f"gallery generation {generation} does not exist or its embeddings were dropped",
            generation=generation,
        )
    if (row[0], int(row[1])) != (model_id, dim):
        raise GalleryModelMismatch(
            f"gallery generation {generation} holds embeddings of model {row[0]!r} (dim "
            f"{row[1]}), not of {model_id!r} (dim {dim})",
            gallery_model_id=row[0],
            gallery_dim=row[1],
            loaded_model_id=model_id,
            loaded_dim=dim,
        )
