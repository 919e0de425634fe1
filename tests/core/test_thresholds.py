"""ThresholdPolicy: which threshold identify applies to a collection, from the request,
the collection's stored target, or the default, at the collection's current size; what
it caches and when it re-reads. The gallery and the settings store are fakes: only
their counters and calls matter here."""

from __future__ import annotations

from typing import cast

import pytest

from app.core.gallery import Gallery
from app.core.openset import ImpostorTail, TailPoint, derive_threshold
from app.core.thresholds import (
    SETTINGS_TTL_S,
    CollectionSettings,
    OpenSetConfig,
    ThresholdPolicy,
)

TAIL = ImpostorTail(
    points=(TailPoint(1e-2, 0.18), TailPoint(1e-4, 0.30), TailPoint(1e-6, 0.42)),
    scale=0.025,
    pairs=10**8,
)
MATCH = 0.3557


class FakeGallery:
    def __init__(self) -> None:
        self.faces: dict[str, int] = {}
        self.versions: dict[str, int] = {}
        self.stats_calls = 0

    def enroll(self, collection: str, faces: int) -> None:
        self.faces[collection] = self.faces.get(collection, 0) + faces
        self.versions[collection] = self.versions.get(collection, 0) + 1

    def stats(self) -> dict[str, int]:
        self.stats_calls += 1
        return dict(self.faces)

    def collection_version(self, collection: str) -> int:
        return self.versions.get(collection, 0)


class FakeStore:
    def __init__(self) -> None:
        self.stored: dict[str, CollectionSettings] = {}
        self.reads = 0

    def collection_settings(self, collection: str) -> CollectionSettings:
        self.reads += 1
        return self.stored.get(collection, CollectionSettings())

    def set_collection_settings(self, collection: str, settings: CollectionSettings) -> None:
        self.stored[collection] = settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy_for(
    gallery: FakeGallery,
    store: FakeStore | None = None,
    *,
    fixed: bool = False,
    clock: Clock | None = None,
) -> ThresholdPolicy:
    config = OpenSetConfig(tail=TAIL, match_threshold=MATCH, default_target_fpir=1e-3, fixed=fixed)
    return ThresholdPolicy(config, cast(Gallery, gallery), store, clock=clock or Clock())


def test_the_threshold_follows_the_collection_as_it_grows() -> None:
    gallery = FakeGallery()
    policy = policy_for(gallery)
    gallery.enroll("c", 10)
    small = policy.threshold("c")
    gallery.enroll("c", 100_000)
    large = policy.threshold("c")

    assert (small.gallery_size, large.gallery_size) == (10, 100_010)
    assert (small.threshold, small.source) == (MATCH, "match_floor")
    expected = derive_threshold(TAIL, gallery_size=100_010, target_fpir=1e-3, floor=MATCH)
    assert large == expected
    assert large.threshold > small.threshold


def test_the_size_is_reread_only_when_the_collection_version_changes() -> None:
    gallery = FakeGallery()
    policy = policy_for(gallery)
    gallery.enroll("c", 500)
    for _ in range(5):
        policy.threshold("c")
    assert gallery.stats_calls == 1
    gallery.enroll("c", 1)
    assert policy.threshold("c").gallery_size == 501
    assert gallery.stats_calls == 2


def test_request_threshold_beats_request_target_beats_collection_beats_default() -> None:
    gallery, store = FakeGallery(), FakeStore()
    gallery.enroll("c", 10**5)
    policy = policy_for(gallery, store)
    assert policy.threshold("c").target_fpir == 1e-3
    store.set_collection_settings("c", CollectionSettings(target_fpir=1e-2))
    policy.forget("c")
    assert policy.threshold("c").target_fpir == 1e-2
    assert policy.threshold("c", target_fpir=1e-4).target_fpir == 1e-4
    by_request = policy.threshold("c", threshold=0.5, target_fpir=None)
    assert (by_request.threshold, by_request.source, by_request.target_fpir) == (
        0.5,
        "request",
        None,
    )


def test_a_stored_target_set_elsewhere_applies_after_the_ttl() -> None:
    gallery, store, clock = FakeGallery(), FakeStore(), Clock()
    gallery.enroll("c", 10**5)
    policy = policy_for(gallery, store, clock=clock)
    assert policy.threshold("c").target_fpir == 1e-3
    store.set_collection_settings("c", CollectionSettings(target_fpir=1e-2))  # another replica
    assert policy.threshold("c").target_fpir == 1e-3  # cached
    clock.now += SETTINGS_TTL_S
    assert policy.threshold("c").target_fpir == 1e-2
    assert store.reads == 2


def test_a_fixed_threshold_stays_fixed_unless_a_request_asks_for_a_target() -> None:
    gallery = FakeGallery()
    gallery.enroll("c", 10**6)
    policy = policy_for(gallery, fixed=True)
    assert (policy.threshold("c").threshold, policy.threshold("c").source) == (MATCH, "fixed")
    assert policy.threshold("c", target_fpir=1e-3).source == "impostor_tail_extrapolated"


@pytest.mark.parametrize("size", [0, 1])
def test_small_collections_get_the_match_floor(size: int) -> None:
    gallery = FakeGallery()
    if size:
        gallery.enroll("c", size)
    applied = policy_for(gallery).threshold("c")
    assert (applied.threshold, applied.gallery_size) == (MATCH, size)
