"""Which threshold identification applies to a collection, now: derived from the
collection's target FPIR and its current size (``app.core.openset``), cached.

The target is the request's, else the collection's own (``CollectionSettingsStore``,
persisted in the gallery so every replica sees it), else the service default
(``FACEREC_TARGET_FPIR``). The size is the collection's face count, re-read only when
the collection's version changes; derived thresholds are cached per (size, target), so
an identification pays a dictionary lookup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.core.gallery import Gallery
from app.core.openset import ImpostorTail, OpenSetThreshold, derive_threshold, fixed_threshold

# Derived thresholds kept (sizes x targets); the oldest goes beyond this.
DERIVED_CACHE_LIMIT = 4096
# A collection's stored target is re-read after this long: how soon a change made on
# one replica applies on the others.
SETTINGS_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class CollectionSettings:
    """What an operator chose for one collection (None: the service default)."""

    target_fpir: float | None = None


@runtime_checkable
class CollectionSettingsStore(Protocol):
    """Per-collection settings, durable and shared by every replica of the gallery."""

    def collection_settings(self, collection: str) -> CollectionSettings:
        """The stored settings; all None when nothing was stored."""
        ...

    def set_collection_settings(self, collection: str, settings: CollectionSettings) -> None:
        """Store (replace) the collection's settings; committed when it returns."""
        ...


@dataclass(frozen=True, slots=True)
class OpenSetConfig:
    tail: ImpostorTail | None  # None: the manifest measured none; the fixed match applies
    match_threshold: float  # the 1:1 threshold: the floor, and the fixed fallback
    default_target_fpir: float
    fixed: bool = False  # the operator fixed the threshold (FACEREC_MATCH_THRESHOLD)


class ThresholdPolicy:
    """Thread-safe: identify calls it from several workers at once."""

    def __init__(
        self,
        config: OpenSetConfig,
        gallery: Gallery,
        store: CollectionSettingsStore | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.gallery = gallery
        self.store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[int, int]] = {}  # collection -> (version, faces)
        self._targets: dict[str, tuple[float, float | None]] = {}  # -> (read at, target)
        self._derived: dict[tuple[int, float], OpenSetThreshold] = {}

    @property
    def describes(self) -> str:
        """How thresholds are chosen, for /ready and logs."""
        if self.config.fixed:
            return "fixed: FACEREC_MATCH_THRESHOLD"
        if self.config.tail is None:
            return "fixed: the recognizer manifest has no impostor_tail"
        return "derived per collection from its target FPIR and size (impostor_tail)"

    def gallery_size(self, collection: str) -> int:
        version = self.gallery.collection_version(collection)
        with self._lock:
            known = self._sizes.get(collection)
        if known is not None and known[0] == version:
            return known[1]
        faces = self.gallery.stats().get(collection, 0)
        with self._lock:
            self._sizes[collection] = (version, faces)
        return faces

    def stored_target(self, collection: str) -> float | None:
        """The collection's own target FPIR (cached for ``SETTINGS_TTL_S``), or None."""
        if self.store is None:
            return None
        now = self._clock()
        with self._lock:
            known = self._targets.get(collection)
        if known is not None and now - known[0] < SETTINGS_TTL_S:
            return known[1]
        target = self.store.collection_settings(collection).target_fpir
        with self._lock:
            self._targets[collection] = (now, target)
        return target

    def forget(self, collection: str) -> None:
        """Drop what is cached of the collection (this replica changed its settings)."""
        with self._lock:
            self._targets.pop(collection, None)

    def target_for(self, collection: str, requested: float | None = None) -> float:
        if requested is not None:
            return requested
        stored = self.stored_target(collection)
        return self.config.default_target_fpir if stored is None else stored

    def threshold(
        self,
        collection: str,
        *,
        target_fpir: float | None = None,
        threshold: float | None = None,
    ) -> OpenSetThreshold:
        """The threshold for one identification in ``collection``: the request's own
        ``threshold`` when given; else derived for the target at the collection's size."""
        size = self.gallery_size(collection)
        if threshold is not None:
            return fixed_threshold(threshold, size, "request")
        if self.config.fixed and target_fpir is None:
            return fixed_threshold(self.config.match_threshold, size, "fixed")
        target = self.target_for(collection, target_fpir)
        key = (size, target)
        with self._lock:
            cached = self._derived.get(key)
        if cached is not None:
            return cached
        derived = derive_threshold(
            self.config.tail,
            gallery_size=size,
            target_fpir=target,
            floor=self.config.match_threshold,
        )
        with self._lock:
            if len(self._derived) >= DERIVED_CACHE_LIMIT:
                self._derived.pop(next(iter(self._derived)))
            self._derived[key] = derived
        return derived
