"""What only the embedded gallery has: its FAISS cache, its files and its directory lock.

The behaviour every backend shares is in tests/gallery/conformance.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.auth.store import KEYS_FILENAME, SqliteKeyStore
from app.core.types import FloatArray, NewFace
from app.errors import GalleryUnavailable
from app.gallery.embedded import EmbeddedGallery as Gallery
from app.gallery.embedded import index as index_module
from app.gallery.embedded.schema import DB_FILENAME, SCHEMA_VERSION
from tests.workers import Workers

UnitVectors = Callable[[int], FloatArray]
MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., Gallery]

TIMEOUT_S = 30


# --- the FAISS cache ------------------------------------------------------------------


def test_a_failed_faiss_update_is_repaired_from_sqlite(
    gallery: Gallery,
    unit_vectors: UnitVectors,
    make_face: MakeFace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The write committed, so it succeeds; the cache is rebuilt from the database."""
    alice = unit_vectors(1)[0]
    real_add = index_module.CollectionIndex.add
    failures = [MemoryError("no room for the vectors")]

    def add_failing_once(self: index_module.CollectionIndex, *args: object) -> None:
        if failures:
            raise failures.pop()
        real_add(self, *args)

    monkeypatch.setattr(index_module.CollectionIndex, "add", add_failing_once)
    [(record, created)] = gallery.add_faces("c", "alice", [make_face(alice)])

    assert created
    (hits,) = gallery.search("c", alice[None, :], top_k=1)
    assert [(hit.subject, hit.face_id) for hit in hits] == [("alice", record.face_id)]


# --- the SQLite file and the directory lock --------------------------------------------


def test_a_foreign_sqlite_file_is_refused(open_gallery: OpenGallery, gallery_dir: Path) -> None:
    gallery_dir.mkdir()
    with sqlite3.connect(gallery_dir / DB_FILENAME) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")

    with pytest.raises(GalleryUnavailable, match="not a facerec gallery"):
        open_gallery()


def test_a_directory_is_opened_by_one_gallery_at_a_time(open_gallery: OpenGallery) -> None:
    first = open_gallery()
    with pytest.raises(GalleryUnavailable, match="already open"):
        open_gallery()
    first.close()
    open_gallery()


def test_the_database_is_durable_and_versioned(
    open_gallery: OpenGallery, gallery_dir: Path
) -> None:
    open_gallery().close()
    with sqlite3.connect(gallery_dir / DB_FILENAME) as db:
        journal_mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert journal_mode == "wal"
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["dim"] == "32"
    assert set(meta) == {"schema_version", "model_id", "dim", "created_at"}


def test_searches_do_not_wait_for_a_write_in_progress(
    gallery: Gallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    """A write holds the database (its commit may fsync for a while); searches go on."""
    gallery.add_faces("c", "alice", [make_face()])
    query = unit_vectors(1)
    finished = threading.Event()

    def search() -> None:
        gallery.search("c", query, top_k=1)
        gallery.best_match_for_subject("c", "alice", query[0])
        gallery.stats()
        finished.set()

    workers = Workers()
    with gallery._db_lock:  # what a write holds during its SQLite transaction
        workers.start(search)
        assert finished.wait(TIMEOUT_S)
    workers.join(TIMEOUT_S)


# --- files at rest ------------------------------------------------------------------------

OWNER_ONLY = 0o600


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 000 for the test: files must be owner-only whatever the process's umask."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_gallery_files_are_owner_only(
    permissive_umask: None, open_gallery: OpenGallery, gallery_dir: Path, make_face: MakeFace
) -> None:
    gallery = open_gallery()
    gallery.add_faces("c", "alice", [make_face(aligned_png=b"\x89PNG\r\n\x1a\n")])

    database_files = [gallery_dir / f"{DB_FILENAME}{suffix}" for suffix in ("", "-wal", "-shm")]
    present = [path for path in database_files if path.exists()]
    assert gallery_dir / DB_FILENAME in present
    assert {path.name: mode_of(path) for path in present} == {
        path.name: OWNER_ONLY for path in present
    }


def test_key_files_are_owner_only(permissive_umask: None, tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / KEYS_FILENAME)
    try:
        store.create_first_admin()
    finally:
        store.close()

    present = [path for path in tmp_path.iterdir() if path.name.startswith(KEYS_FILENAME)]
    assert tmp_path / KEYS_FILENAME in present
    assert {path.name: mode_of(path) for path in present} == {
        path.name: OWNER_ONLY for path in present
    }


def test_an_existing_permissive_database_is_restricted_on_open(
    open_gallery: OpenGallery, gallery_dir: Path
) -> None:
    open_gallery().close()
    os.chmod(gallery_dir / DB_FILENAME, 0o644)

    open_gallery()

    assert mode_of(gallery_dir / DB_FILENAME) == OWNER_ONLY
