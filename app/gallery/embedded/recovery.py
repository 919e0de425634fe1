"""Build the in-memory indexes at open: from a verified snapshot caught up from SQLite,
or from SQLite alone.

SQLite is the truth. A snapshot is used only when all of these hold:

1. its manifest parses, is of this format, model id, dim and metric;
2. the database records its token with the same change marks (so it was taken of
   *this* database's history: a database restored from a backup, or a snapshot
   copied from another gallery, fails here);
3. every file has the size and sha256 the manifest lists, and parses into indexes
   that agree with the manifest's counts.

It is then caught up: faces the deletion log lists after the snapshot's last entry
are removed, faces with row ids above its last row id are added (faces are
immutable, so nothing else can have changed). Finally every collection's face count
must equal SQLite's; a collection that disagrees is rebuilt from SQLite, with a
warning. Anything that fails along the way means a full rebuild from SQLite, which is
slower but never wrong.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from app.gallery.embedded import repository, snapshot
from app.gallery.embedded.index import CollectionIndex
from app.gallery.embedded.vectors import IndexKind, IndexPolicy

logger = logging.getLogger(__name__)

NO_SNAPSHOT = "there is none"
# Rows read per query when loading embeddings: bounds memory, not correctness.
LOAD_BATCH_SIZE = 8192


@dataclass(frozen=True, slots=True)
class Recovery:
    """How the indexes were obtained at open (logged, and used to plan a snapshot)."""

    from_snapshot: bool
    reason: str  # why no snapshot was used ("" when one was)
    caught_up: int  # faces added or removed after loading the snapshot
    seconds: float


def recover_indexes(
    connection: sqlite3.Connection,
    directory: Path,
    *,
    model_id: str,
    dim: int,
    policy: IndexPolicy,
) -> tuple[dict[str, CollectionIndex], Recovery]:
    """The indexes of every collection. The caller holds the connection exclusively."""
    started = time.perf_counter()
    try:
        indexes, caught_up = _from_snapshot(
            connection, directory, model_id=model_id, dim=dim, policy=policy
        )
    except snapshot.SnapshotRejected as exc:
        reason = str(exc)
        if reason != NO_SNAPSHOT:
            logger.warning("index snapshot not used (%s); rebuilding from the database", exc)
    else:
        return indexes, Recovery(True, "", caught_up, time.perf_counter() - started)
    indexes = {
        collection: build_from_database(connection, collection, dim=dim, policy=policy)
        for collection in repository.collections(connection)
    }
    return indexes, Recovery(False, reason, 0, time.perf_counter() - started)


def build_from_database(
    connection: sqlite3.Connection, collection: str, *, dim: int, policy: IndexPolicy
) -> CollectionIndex:
    """A collection's exact index from its rows in SQLite: quick to build even at a
    million faces (no graph); the gallery converts it in the background if its size
    calls for HNSW. Raises ``ValueError`` when a stored embedding is damaged.
    """
    index = CollectionIndex(dim, policy, IndexKind.EXACT)
    for batch in repository.embedding_batches(
        connection, collection, dim=dim, batch_size=LOAD_BATCH_SIZE
    ):
        index.add(batch.ids, batch.embeddings, batch.subjects, batch.face_ids)
    return index


def _from_snapshot(
    connection: sqlite3.Connection,
    directory: Path,
    *,
    model_id: str,
    dim: int,
    policy: IndexPolicy,
) -> tuple[dict[str, CollectionIndex], int]:
    manifest = snapshot.read_manifest(directory, model_id=model_id, dim=dim)
    if manifest is None:
        raise snapshot.SnapshotRejected(NO_SNAPSHOT)
    if not repository.snapshot_is_recorded(connection, manifest.token, manifest.marks):
        raise snapshot.SnapshotRejected(
            f"the database does not record snapshot {manifest.token} "
            "(a database restored from a backup, or a snapshot of another gallery)"
        )
    indexes = snapshot.read_indexes(directory, manifest, policy=policy)
    caught_up = _catch_up(connection, indexes, manifest.marks, dim=dim, policy=policy)
    _check_counts(connection, indexes, dim=dim, policy=policy)
    for collection in [name for name, index in indexes.items() if not index.face_count]:
        del indexes[collection]
    return indexes, caught_up


def _catch_up(
    connection: sqlite3.Connection,
    indexes: dict[str, CollectionIndex],
    marks: repository.ChangeMarks,
    *,
    dim: int,
    policy: IndexPolicy,
) -> int:
    """Apply the deletions and additions made after the snapshot; returns how many."""
    deleted: dict[str, list[int]] = defaultdict(list)
    for collection, row_id in repository.deletions_after(connection, marks.last_deletion_seq):
        deleted[collection].append(row_id)
    for collection, row_ids in deleted.items():
        if collection in indexes:
            indexes[collection].remove(row_ids)
    added = 0
    for collections, rows in repository.faces_after(
        connection, marks.last_row_id, dim=dim, batch_size=LOAD_BATCH_SIZE
    ):
        for collection, picked in _split_by_collection(collections).items():
            index = indexes.get(collection)
            if index is None:
                index = indexes[collection] = CollectionIndex(dim, policy)
            index.add(
                [rows.ids[row] for row in picked],
                rows.embeddings[picked],
                [rows.subjects[row] for row in picked],
                [rows.face_ids[row] for row in picked],
            )
        added += len(rows.ids)
    return added + sum(len(row_ids) for row_ids in deleted.values())


def _split_by_collection(collections: list[str]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for row, collection in enumerate(collections):
        rows[collection].append(row)
    return rows


def _check_counts(
    connection: sqlite3.Connection,
    indexes: dict[str, CollectionIndex],
    *,
    dim: int,
    policy: IndexPolicy,
) -> None:
    """Rebuild from SQLite every collection whose face count differs from SQLite's."""
    stored = repository.count_faces(connection)
    for collection in sorted(set(stored) | set(indexes)):
        index = indexes.get(collection)
        held = 0 if index is None else index.face_count
        if held != stored.get(collection, 0):
            logger.warning(
                "index snapshot of collection %r holds %d faces after catching up, the "
                "database %d; rebuilding it from the database",
                collection,
                held,
                stored.get(collection, 0),
            )
            indexes[collection] = build_from_database(
                connection, collection, dim=dim, policy=policy
            )
