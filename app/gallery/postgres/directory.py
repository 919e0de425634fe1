"""What one replica knows of every collection: its id, face and subject counts, version.

The database keeps these counters (triggers, in the writing transaction) and
announces each change on ``facerec_gallery``; this cache follows the announcements
(it is a ``notifications.Subscriber``) and is re-read whole after every reconnection.
It answers the cheap, polled calls (``stats``, ``collection_version``, which the live
stream makes per frame) from memory. Nothing that decides a search result comes
from here: searches read the database.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CollectionRow:
    collection_id: int
    name: str
    faces: int
    subjects: int
    version: int


class CollectionDirectory:
    """Thread-safe. ``load_all`` and ``load_one`` read the ``collections`` table."""

    def __init__(
        self,
        load_all: Callable[[], list[CollectionRow]],
        load_one: Callable[[int], CollectionRow | None],
    ) -> None:
        self._load_all = load_all
        self._load_one = load_one
        self._lock = threading.Lock()
        self._rows: dict[int, CollectionRow] = {}
        self._ids: dict[str, int] = {}

    # --- reads --------------------------------------------------------------------

    def id_of(self, name: str) -> int | None:
        """The collection's id if this replica has seen it (ids never change)."""
        with self._lock:
            return self._ids.get(name)

    def row(self, name: str) -> CollectionRow | None:
        with self._lock:
            collection_id = self._ids.get(name)
            return None if collection_id is None else self._rows[collection_id]

    def stats(self) -> dict[str, int]:
        """Faces per non-empty collection, by name."""
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda row: row.name)
        return {row.name: row.faces for row in rows if row.faces}

    def version(self, name: str) -> int:
        row = self.row(name)
        return 0 if row is None else row.version

    # --- changes ------------------------------------------------------------------

    def apply(self, row: CollectionRow) -> None:
        """Take ``row`` unless a later version of the collection is already known."""
        with self._lock:
            known = self._rows.get(row.collection_id)
            if known is None or row.version > known.version:
                self._rows[row.collection_id] = row
                self._ids[row.name] = row.collection_id

    def resync(self) -> None:
        """Re-read every collection (after connecting: the snapshot is authoritative)."""
        rows = self._load_all()
        with self._lock:
            self._rows = {row.collection_id: row for row in rows}
            self._ids = {row.name: row.collection_id for row in rows}

    def notified(self, payload: str) -> None:
        """``{"id", "faces", "subjects", "version"}`` from the counting trigger."""
        message = json.loads(payload)
        collection_id = int(message["id"])
        with self._lock:
            known = self._rows.get(collection_id)
        if known is None:
            fresh = self._load_one(collection_id)  # a collection new to this replica
            if fresh is not None:
                self.apply(fresh)
            return
        self.apply(
            CollectionRow(
                collection_id=collection_id,
                name=known.name,
                faces=int(message["faces"]),
                subjects=int(message["subjects"]),
                version=int(message["version"]),
            )
        )
