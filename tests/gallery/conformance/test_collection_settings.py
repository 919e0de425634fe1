"""Per-collection settings (the target FPIR of open-set identification) on every backend:
absent until stored, durable across a restart, replaced by a later write, cleared by
None, and seen by a second store opened on the same data (another replica)."""

from __future__ import annotations

import pytest

from app.core.thresholds import CollectionSettings, CollectionSettingsStore
from app.errors import InvalidRequest
from tests.gallery.conformance.conftest import Backend, OpenGallery


def store_of(gallery: object) -> CollectionSettingsStore:
    assert isinstance(gallery, CollectionSettingsStore)
    return gallery


def test_a_collection_has_no_settings_until_stored(open_gallery: OpenGallery) -> None:
    assert store_of(open_gallery()).collection_settings("never") == CollectionSettings()


def test_settings_survive_a_restart_and_reach_another_replica(
    open_gallery: OpenGallery, backend: Backend
) -> None:
    first = open_gallery()
    store_of(first).set_collection_settings("lobby", CollectionSettings(target_fpir=1e-4))
    store_of(first).set_collection_settings("other", CollectionSettings(target_fpir=0.02))
    if backend.name == "embedded":
        first.close()  # one process owns the embedded files: a restart
    second = store_of(open_gallery())  # postgres: a second replica, the first still open

    assert second.collection_settings("lobby") == CollectionSettings(target_fpir=1e-4)
    assert second.collection_settings("other") == CollectionSettings(target_fpir=0.02)


def test_a_later_write_replaces_and_none_clears(open_gallery: OpenGallery) -> None:
    store = store_of(open_gallery())
    store.set_collection_settings("lobby", CollectionSettings(target_fpir=1e-4))
    store.set_collection_settings("lobby", CollectionSettings(target_fpir=3e-3))
    assert store.collection_settings("lobby").target_fpir == 3e-3
    store.set_collection_settings("lobby", CollectionSettings(target_fpir=None))
    assert store.collection_settings("lobby") == CollectionSettings()


def test_malformed_collection_names_are_refused(open_gallery: OpenGallery) -> None:
    with pytest.raises(InvalidRequest):
        store_of(open_gallery()).set_collection_settings("bad\x00name", CollectionSettings())
