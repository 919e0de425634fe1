"""The embedded gallery's generation store: records, the atomic ACTIVE pointer, crashes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.errors import GalleryUnavailable, InvalidRequest
from app.gallery.embedded import generations as generations_module
from app.gallery.embedded.generations import EmbeddedGenerations

ORIGIN = {"model_id": "model-a", "dim": 512, "manifest_path": "/m/a.json", "manifest_sha256": "aa"}


def create(store: EmbeddedGenerations, model_id: str = "model-b", by: str | None = "key1") -> int:
    return store.create(
        model_id=model_id,
        dim=256,
        manifest_path=f"/m/{model_id}.json",
        manifest_sha256=f"sha-{model_id}",
        created_by=by,
    ).number


def test_a_gallery_never_swapped_has_no_pointer_and_serves_generation_0_in_place(
    tmp_path: Path,
) -> None:
    store = EmbeddedGenerations(tmp_path)

    assert store.active() is None
    assert store.active_number() == 0
    assert store.gallery_dir(0) == tmp_path
    assert store.generations() == []
    assert not (tmp_path / "generations").exists()


def test_create_records_the_model_and_leaves_the_active_one_alone(tmp_path: Path) -> None:
    store = EmbeddedGenerations(tmp_path)
    store.record_origin(**ORIGIN)

    number = create(store)
    generation = store.get(number)

    assert number == 1
    assert store.gallery_dir(1) == tmp_path / "generations" / "1"
    assert store.gallery_dir(1).is_dir()
    assert (generation.model_id, generation.dim, generation.manifest_sha256) == (
        "model-b",
        256,
        "sha-model-b",
    )
    assert generation.created_by == "key1"
    assert generation.activations == ()
    assert store.active() is None
    assert create(store, "model-c") == 2


def test_activate_points_at_the_generation_and_records_when_and_by_whom(tmp_path: Path) -> None:
    store = EmbeddedGenerations(tmp_path)
    store.record_origin(**ORIGIN)
    number = create(store)

    pointer = store.activate(number, by="key7")

    assert (pointer.generation, pointer.previous, pointer.activated_by) == (1, 0, "key7")
    assert store.active() == pointer  # read back from the file
    (activation,) = store.get(1).activations
    assert (activation.at, activation.by) == (pointer.activated_at, "key7")
    back = store.activate(0, by=None)  # a rollback
    assert (back.generation, back.previous) == (0, 1)
    assert [a.by for a in store.get(0).activations] == [None]


def test_a_crash_while_writing_active_leaves_the_old_generation_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EmbeddedGenerations(tmp_path)
    store.record_origin(**ORIGIN)
    first = create(store)
    store.activate(first, by="key1")
    second = create(store, "model-c")

    def crash(source: object, target: object) -> None:
        raise OSError("power lost before the rename")

    monkeypatch.setattr(generations_module.os, "replace", crash)
    with pytest.raises(OSError, match="power lost"):
        store.activate(second, by="key1")
    monkeypatch.undo()

    restarted = EmbeddedGenerations(tmp_path)
    pointer = restarted.active()
    assert pointer is not None
    assert (pointer.generation, pointer.previous) == (first, 0)
    assert restarted.discard_unfinished() == [second]  # the next start cleans up
    assert not restarted.gallery_dir(second).exists()
    assert restarted.gallery_dir(first).is_dir()


def test_a_crash_after_active_but_before_the_record_is_mended_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EmbeddedGenerations(tmp_path)
    number = create(store)

    def crash(*_: object) -> None:
        raise OSError("killed between the two files")

    monkeypatch.setattr(EmbeddedGenerations, "_note_activation", crash)
    with pytest.raises(OSError, match="killed"):
        store.activate(number, by="key9")
    monkeypatch.undo()

    restarted = EmbeddedGenerations(tmp_path)
    assert restarted.active_number() == number  # ACTIVE is the truth
    assert restarted.get(number).activations == ()
    restarted.reconcile()
    (activation,) = restarted.get(number).activations
    assert activation.by == "key9"
    restarted.reconcile()  # idempotent
    assert len(restarted.get(number).activations) == 1
    assert restarted.discard_unfinished() == []  # the active one stays


def test_a_crash_between_the_folder_and_its_record_leaves_a_folder_the_next_start_removes(
    tmp_path: Path,
) -> None:
    store = EmbeddedGenerations(tmp_path)
    (tmp_path / "generations" / "3").mkdir(parents=True)

    assert store.discard_unfinished() == []
    assert not (tmp_path / "generations" / "3").exists()
    assert create(store) == 1


def test_no_temporary_file_is_left_by_a_write(tmp_path: Path) -> None:
    store = EmbeddedGenerations(tmp_path)
    store.activate(create(store), by=None)

    leftovers = [name for name in os.listdir(tmp_path / "generations") if name.startswith(".")]
    assert leftovers == []


def test_a_damaged_pointer_stops_start_up_with_a_clear_error(tmp_path: Path) -> None:
    store = EmbeddedGenerations(tmp_path)
    store.activate(create(store), by=None)
    (tmp_path / "generations" / "ACTIVE").write_text('{"generation": "one"}')

    with pytest.raises(GalleryUnavailable, match="ACTIVE is damaged"):
        store.active()
    (tmp_path / "generations" / "ACTIVE").write_text("{not json")
    with pytest.raises(GalleryUnavailable, match="not valid JSON"):
        store.active()


def test_the_active_and_previous_generations_are_never_discarded_and_older_ones_retire(
    tmp_path: Path,
) -> None:
    store = EmbeddedGenerations(tmp_path)
    store.record_origin(**ORIGIN)
    for model in ("b", "c", "d"):
        store.activate(create(store, model), by=None)  # 1, 2, 3: previous is 2

    for kept in (0, 2, 3):
        with pytest.raises(InvalidRequest):
            store.discard(kept)
    assert store.retire_older() == [1]
    assert [g.number for g in store.generations()] == [0, 2, 3]
