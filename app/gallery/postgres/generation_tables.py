"""Where each gallery generation's embeddings live, and the guard every enrollment takes.

Generation 0's embeddings are ``faces.embedding`` (the table the gallery always had);
generation n >= 1 has a table of its own, ``face_vectors_<n>``, with the columns a
search reads under the same names (``id``, ``face_id``, ``collection_id``,
``subject_id``, ``embedding``), so one statement serves every generation with only
the table name changed. Its ``id`` is the face's row in ``faces`` (ON DELETE CASCADE:
deleting a face, or its subject, removes it from every generation at once).

The write barrier of a swap is database-wide: every enrollment takes
``WRITE_BARRIER_KEY`` shared (transaction-scoped advisory lock) and then checks that
its generation is the active one; the swap's last step holds it exclusively while it
copies the last faces and flips the pointer. A replica that has not switched yet
therefore fails its enrollment with ``GenerationRetired`` instead of writing a face
the active generation would never see.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from app.errors import GenerationRetired
from app.gallery.postgres.schema import HNSW_EF_CONSTRUCTION, HNSW_M, MAX_INDEXED_DIM

# Advisory lock keys, beside app.storage.postgres.migrations.MIGRATION_LOCK_KEY:
# "facerec" with one more byte each, so no two collide and other apps won't pick them.
WRITE_BARRIER_KEY = 0x66616365726563 * 256 + 1
SWAP_JOB_KEY = 0x66616365726563 * 256 + 2


def vectors_table(generation: int) -> str:
    """The table holding generation ``generation``'s embeddings."""
    number = int(generation)
    if number < 0:
        raise ValueError(f"generation numbers are not negative, got {generation}")
    return "faces" if number == 0 else f"face_vectors_{number}"


def index_name(generation: int) -> str:
    return "faces_embedding_hnsw" if generation == 0 else f"face_vectors_{int(generation)}_hnsw"


def create_vectors_table(connection: psycopg.Connection[Any], generation: int, dim: int) -> None:
    """The empty table of a new generation n >= 1, with its btree and HNSW indexes.

    The HNSW index exists from the start: each copied face enters the graph as it is
    written (a few ms, next to the tens of ms its embedding costs), so the swap's
    switch never waits for an index build."""
    if generation < 1:
        raise ValueError("generation 0 uses the faces table")
    if not 0 < dim <= MAX_INDEXED_DIM:
        raise ValueError(f"dim must be 1..{MAX_INDEXED_DIM} for the HNSW index, got {dim}")
    table, size = vectors_table(generation), int(dim)
    connection.execute(
        f"CREATE TABLE {table} ("
        "id bigint PRIMARY KEY REFERENCES faces (id) ON DELETE CASCADE, "
        'face_id text COLLATE "C" NOT NULL UNIQUE, '
        "collection_id bigint NOT NULL, "
        "subject_id bigint NOT NULL, "
        f"embedding vector({size}) NOT NULL)"
    )
    connection.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN")
    connection.execute(f"CREATE INDEX {table}_by_collection ON {table} (collection_id, id)")
    connection.execute(
        f"CREATE INDEX {index_name(generation)} ON {table} USING hnsw "
        f"((embedding::halfvec({size})) halfvec_ip_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )


def drop_vectors_table(connection: psycopg.Connection[Any], generation: int) -> None:
    if generation < 1:
        raise ValueError("generation 0's embeddings are the faces table's own column")
    connection.execute(f"DROP TABLE IF EXISTS {vectors_table(generation)}")


def active_generation(connection: psycopg.Connection[Any]) -> int:
    row = connection.execute("SELECT generation FROM gallery_active").fetchone()
    return 0 if row is None else int(row[0])


def require_active(connection: psycopg.Connection[Any], generation: int) -> None:
    """Inside an enrollment's transaction: wait out a swap's barrier, then make sure
    ``generation`` still serves (else nothing is written: ``GenerationRetired``)."""
    connection.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_BARRIER_KEY,))
    if active_generation(connection) != generation:
        raise GenerationRetired(
            "the recognizer was switched while this request ran; nothing was written: "
            "send it again",
            retry_after_s=1,
        )


@contextmanager
def retired_if_dropped(generation: int) -> Iterator[None]:
    """A replica still on a generation whose table a later swap dropped (it failed to
    follow two switches) answers the retry error, not a 500, until it switches."""
    try:
        yield
    except pg_errors.UndefinedTable as exc:
        if generation == 0:
            raise
        raise GenerationRetired(
            f"gallery generation {generation} was retired; this replica is switching to "
            "the active one: send the request again",
            retry_after_s=1,
        ) from exc
