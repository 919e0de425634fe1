"""Look-alike subject names within a collection: the second spelling is refused.

"Ada" and "ADA" (or "Ａｄａ" in full-width letters) are different strings that a
person reads as one name (``app.core.names.name_key``). A collection may hold only
one of them, so an operator reading a match never has to guess which subject it was.

The check and the write that creates a subject run under one lock, so two enrolls
racing with look-alike names cannot both succeed in this process. The keys of a
collection's subjects are read from the gallery once and then kept up to date by
the enrolls made here; a key whose subjects were since deleted (by a route that
bypasses this class) is re-checked against the gallery before it refuses anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from app.core.names import name_key
from app.core.types import FaceRecord, SubjectSummary
from app.errors import NameConflict, SubjectNotFound

# Subjects read per gallery page while collecting a collection's names.
_PAGE = 500


class SubjectDirectory(Protocol):
    """What this needs of the gallery."""

    def list_subjects(
        self, collection: str, *, limit: int, offset: int
    ) -> tuple[list[SubjectSummary], int]: ...

    def get_subject(
        self, collection: str, subject: str
    ) -> tuple[SubjectSummary, list[FaceRecord]]: ...


class SubjectNames:
    def __init__(self, gallery: SubjectDirectory, key: Callable[[str], str] = name_key) -> None:
        self._gallery = gallery
        self._key = key
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, set[str]]] = {}  # collection -> key -> names

    def check(self, collection: str, subject: str) -> None:
        """Raise ``NameConflict`` if another subject of ``collection`` looks like ``subject``."""
        with self._lock:
            self._check(collection, subject)

    @contextmanager
    def claim(self, collection: str, subject: str) -> Iterator[None]:
        """Check, then hold the lock while the caller creates ``subject``; it is recorded
        unless the block raises."""
        with self._lock:
            self._check(collection, subject)
            yield
            self._known(collection).setdefault(self._key(subject), set()).add(subject)

    def _check(self, collection: str, subject: str) -> None:
        names = self._known(collection).get(self._key(subject))
        if not names or subject in names:
            return
        for other in sorted(names - {subject}):
            if self._exists(collection, other):
                raise NameConflict(
                    f"collection {collection!r} already has subject {other!r}, which looks "
                    f"the same as {subject!r}; enroll under {other!r} or choose another name",
                    collection=collection,
                    existing=other,
                )
            names.discard(other)

    def _known(self, collection: str) -> dict[str, set[str]]:
        known = self._keys.get(collection)
        if known is None:
            known = self._keys[collection] = {}
            for name in self._all_names(collection):
                known.setdefault(self._key(name), set()).add(name)
        return known

    def _all_names(self, collection: str) -> Iterator[str]:
        offset = 0
        while True:
            page, total = self._gallery.list_subjects(collection, limit=_PAGE, offset=offset)
            yield from (summary.subject for summary in page)
            offset += len(page)
            if not page or offset >= total:
                return

    def _exists(self, collection: str, subject: str) -> bool:
        try:
            self._gallery.get_subject(collection, subject)
        except SubjectNotFound:
            return False
        return True
