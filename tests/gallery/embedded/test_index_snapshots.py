"""Index snapshots: used when verified and current, caught up from SQLite, never trusted
otherwise; a crash at any point loses nothing and never serves a wrong answer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.types import FloatArray, NewFace
from app.gallery.embedded import EmbeddedGallery
from app.gallery.embedded import snapshot as snapshot_module
from app.gallery.embedded.schema import DB_FILENAME
from app.gallery.embedded.snapshot import MANIFEST_NAME, SNAPSHOT_DIRNAME
from app.gallery.embedded.snapshotter import SnapshotPolicy
from app.gallery.embedded.vectors import IndexPolicy
from tests.gallery.conftest import DIM, MODEL_ID, NearVector, UnitVectors

REPO = Path(__file__).resolve().parents[3]
# HNSW from 200 faces; snapshots of any size, only at close (tests decide when).
INDEX_POLICY = IndexPolicy(hnsw_min_faces=200, hnsw_m=16, hnsw_ef_construction=40)
AT_CLOSE = SnapshotPolicy(min_faces=0, every_changes=10**9, min_interval_s=0)
FACES = 400

OpenSnapshotted = Callable[..., EmbeddedGallery]


@pytest.fixture
def open_snapshotted(gallery_dir: Path) -> Iterator[OpenSnapshotted]:
    """``open_snapshotted(directory=gallery_dir, snapshots=AT_CLOSE)``; closed at teardown."""
    opened: list[EmbeddedGallery] = []

    def open_(
        directory: Path = gallery_dir, snapshots: SnapshotPolicy = AT_CLOSE
    ) -> EmbeddedGallery:
        gallery = EmbeddedGallery(
            directory,
            model_id=MODEL_ID,
            dim=DIM,
            index_policy=INDEX_POLICY,
            snapshot_policy=snapshots,
        )
        opened.append(gallery)
        return gallery

    yield open_
    for gallery in opened:
        gallery.close()


def face(vector: FloatArray) -> NewFace:
    return NewFace(hashlib.sha256(vector.tobytes()).hexdigest(), (0.0, 0.0, 9.0, 9.0), 0.9, vector)


def enroll(gallery: EmbeddedGallery, vectors: FloatArray, *, prefix: str = "s") -> None:
    """Four faces per subject: ``{prefix}0`` owns vectors 0-3, and so on."""
    gallery.add_faces_bulk(
        "c", [(f"{prefix}{row // 4}", face(vector)) for row, vector in enumerate(vectors)]
    )


def top_subjects(gallery: EmbeddedGallery, probes: FloatArray) -> list[str]:
    return [hits[0].subject if hits else "" for hits in gallery.search("c", probes, top_k=3)]


def index_files(directory: Path) -> list[Path]:
    return sorted((directory / SNAPSHOT_DIRNAME).iterdir())


def test_reopening_loads_the_snapshot_and_answers_the_same(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, near: NearVector
) -> None:
    vectors = unit_vectors(FACES)
    probes = np.stack([near(vector) for vector in vectors])
    gallery = open_snapshotted()
    enroll(gallery, vectors)
    assert gallery.wait_until_indexed(timeout_s=120)
    assert gallery.index_kinds() == {"c": "hnsw"}
    before = gallery.search("c", probes, top_k=5)
    gallery.close()

    reopened = open_snapshotted()

    assert reopened.recovery.from_snapshot
    assert reopened.recovery.caught_up == 0
    assert reopened.index_kinds() == {"c": "hnsw"}
    assert reopened.search("c", probes, top_k=5) == before


def test_snapshot_files_are_owner_only(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, gallery_dir: Path
) -> None:
    gallery = open_snapshotted()
    enroll(gallery, unit_vectors(20))
    gallery.close()

    directory = gallery_dir / SNAPSHOT_DIRNAME
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    names = {path.suffix for path in index_files(gallery_dir)}
    assert names == {".json", ".faiss", ".npz"}
    assert {stat.S_IMODE(path.stat().st_mode) for path in index_files(gallery_dir)} == {0o600}


# The child writes after the parent's snapshot and dies without closing: the next
# open must catch up exactly those changes from SQLite.
CHANGE_AND_DIE = textwrap.dedent(
    """
    import hashlib, os, signal, sys
    from pathlib import Path
    import numpy as np
    from app.core.types import NewFace
    from app.gallery.embedded import EmbeddedGallery
    from app.gallery.embedded.snapshotter import SnapshotPolicy
    from app.gallery.embedded.vectors import IndexPolicy

    gallery = EmbeddedGallery(
        Path(sys.argv[1]), model_id=sys.argv[2], dim=int(sys.argv[3]),
        index_policy=IndexPolicy(hnsw_min_faces=200, hnsw_m=16, hnsw_ef_construction=40),
        snapshot_policy=SnapshotPolicy(min_faces=0, every_changes=10**9),
    )
    assert gallery.recovery.from_snapshot
    vectors = np.load(sys.argv[4])
    gallery.add_faces_bulk("c", [
        (f"new{row // 4}", NewFace(hashlib.sha256(v.tobytes()).hexdigest(), (0, 0, 9, 9), 0.9, v))
        for row, v in enumerate(vectors)
    ])
    gallery.delete_subject("c", "s0")
    gallery.delete_subject("c", "s1")
    print("DONE", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_changes_after_the_snapshot_are_caught_up_from_the_database(
    open_snapshotted: OpenSnapshotted,
    unit_vectors: UnitVectors,
    near: NearVector,
    gallery_dir: Path,
    tmp_path: Path,
) -> None:
    vectors, newcomers = unit_vectors(FACES), unit_vectors(40)
    gallery = open_snapshotted()
    enroll(gallery, vectors)
    gallery.close()
    np.save(tmp_path / "new.npy", newcomers)

    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHANGE_AND_DIE,
            str(gallery_dir),
            MODEL_ID,
            str(DIM),
            str(tmp_path / "new.npy"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "DONE" in child.stdout

    reopened = open_snapshotted()

    assert reopened.recovery.from_snapshot
    assert reopened.recovery.caught_up == 40 + 8  # faces added, faces of s0 and s1 deleted
    assert reopened.total_faces() == FACES - 8 + 40
    old = top_subjects(reopened, np.stack([near(vector) for vector in vectors]))
    assert "s0" not in old
    assert "s1" not in old
    assert old[8:] == [f"s{row // 4}" for row in range(8, FACES)]
    new = top_subjects(reopened, np.stack([near(vector) for vector in newcomers]))
    assert new == [f"new{row // 4}" for row in range(40)]


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        path = directory / MANIFEST_NAME
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return edit


def _collection(manifest: dict[str, Any]) -> dict[str, Any]:
    collection: dict[str, Any] = manifest["collections"][0]
    return collection


def _first(suffix: str, damage: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        damage(next(path for path in sorted(directory.iterdir()) if path.suffix == suffix))

    return apply


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "a flipped byte in the FAISS file": (_first(".faiss", _flip_a_byte), "damaged"),
    "a flipped byte in the maps file": (_first(".npz", _flip_a_byte), "damaged"),
    "a truncated FAISS file": (
        _first(".faiss", lambda path: os.truncate(path, path.stat().st_size // 3)),
        "bytes",
    ),
    "a missing maps file": (_first(".npz", Path.unlink), "cannot read"),
    "a manifest that is not JSON": (
        lambda directory: (directory / MANIFEST_NAME).write_bytes(b"\x00{not json"),
        "not a valid manifest",
    ),
    "a manifest of another model": (
        _edit_manifest(lambda manifest: manifest.update(model_id="other-model")),
        "other-model",
    ),
    "a manifest of a newer format": (
        _edit_manifest(lambda manifest: manifest.update(format=99)),
        "format 99",
    ),
    "a manifest with other marks": (
        _edit_manifest(lambda manifest: manifest.update(last_row_id=1)),
        "does not record",
    ),
    "a manifest with a wrong count": (
        _edit_manifest(lambda manifest: _collection(manifest).update(live_faces=3)),
        "manifest says",
    ),
    "a file name pointing elsewhere": (
        _edit_manifest(lambda manifest: _collection(manifest)["index"].update(file="../x")),
        "plain name",
    ),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_an_unusable_snapshot_is_rebuilt_from_the_database(
    damage: str,
    open_snapshotted: OpenSnapshotted,
    unit_vectors: UnitVectors,
    near: NearVector,
    gallery_dir: Path,
) -> None:
    vectors = unit_vectors(FACES)
    gallery = open_snapshotted()
    enroll(gallery, vectors)
    gallery.close()
    apply, reason = DAMAGES[damage]
    apply(gallery_dir / SNAPSHOT_DIRNAME)

    reopened = open_snapshotted()

    assert not reopened.recovery.from_snapshot
    assert reason in reopened.recovery.reason
    probes = np.stack([near(vector) for vector in vectors])
    expected = [f"s{row // 4}" for row in range(FACES)]
    # Rebuilt exact at once (quick even for a million faces), HNSW in the background.
    assert top_subjects(reopened, probes) == expected
    assert reopened.wait_until_indexed(timeout_s=120)
    assert reopened.index_kinds() == {"c": "hnsw"}
    assert top_subjects(reopened, probes) == expected


def test_a_snapshot_of_another_gallery_is_not_used(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, tmp_path: Path
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for directory, prefix in ((ours, "ours"), (theirs, "theirs")):
        gallery = open_snapshotted(directory)
        enroll(gallery, unit_vectors(FACES), prefix=prefix)
        gallery.close()
    shutil.rmtree(ours / SNAPSHOT_DIRNAME)
    shutil.copytree(theirs / SNAPSHOT_DIRNAME, ours / SNAPSHOT_DIRNAME)

    reopened = open_snapshotted(ours)

    assert not reopened.recovery.from_snapshot
    assert "does not record" in reopened.recovery.reason
    hits = reopened.search("c", unit_vectors(5), top_k=3)
    assert all(hit.subject.startswith("ours") for query in hits for hit in query)


def test_a_database_restored_from_a_backup_does_not_trust_a_newer_snapshot(
    open_snapshotted: OpenSnapshotted,
    unit_vectors: UnitVectors,
    near: NearVector,
    gallery_dir: Path,
    tmp_path: Path,
) -> None:
    vectors, later = unit_vectors(FACES), unit_vectors(40)
    gallery = open_snapshotted()
    enroll(gallery, vectors)
    gallery.close()
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(gallery_dir / DB_FILENAME, backup)  # closed: the WAL is checkpointed
    gallery = open_snapshotted()
    gallery.delete_subject("c", "s0")
    enroll(gallery, later, prefix="later")
    gallery.close()  # a newer snapshot: s0 gone, later* present
    shutil.copy(backup, gallery_dir / DB_FILENAME)
    for side in ("-wal", "-shm"):
        (gallery_dir / f"{DB_FILENAME}{side}").unlink(missing_ok=True)
    # The restored database reuses the row ids the newer snapshot gave to later*.

    restored = open_snapshotted()

    assert not restored.recovery.from_snapshot
    assert restored.total_faces() == FACES
    probes = np.stack([near(vector) for vector in [*vectors[:4], *later]])
    assert set(top_subjects(restored, probes[:4])) == {"s0"}
    assert not any(subject.startswith("later") for subject in top_subjects(restored, probes))


def test_a_failed_snapshot_leaves_the_previous_one_in_use(
    open_snapshotted: OpenSnapshotted,
    unit_vectors: UnitVectors,
    near: NearVector,
    gallery_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors, later = unit_vectors(FACES), unit_vectors(40)
    gallery = open_snapshotted()
    enroll(gallery, vectors)
    gallery.close()
    first_snapshot = index_files(gallery_dir)
    gallery = open_snapshotted()
    enroll(gallery, later, prefix="later")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot_module, "_write_maps", disk_full)
    gallery.close()  # logs the failure; the database has everything
    monkeypatch.undo()

    assert index_files(gallery_dir) == first_snapshot  # the half-written files are gone
    reopened = open_snapshotted()
    assert reopened.recovery.from_snapshot
    assert reopened.recovery.caught_up == 40
    probes = np.stack([near(vector) for vector in later])
    assert top_subjects(reopened, probes) == [f"later{row // 4}" for row in range(40)]


def test_a_small_gallery_keeps_no_snapshot(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, gallery_dir: Path
) -> None:
    gallery = open_snapshotted()
    enroll(gallery, unit_vectors(40))
    gallery.close()
    assert (gallery_dir / SNAPSHOT_DIRNAME / MANIFEST_NAME).is_file()

    small = SnapshotPolicy(min_faces=100, every_changes=10**9, min_interval_s=0)
    gallery = open_snapshotted(snapshots=small)
    gallery.delete_subject("c", "s0")
    gallery.close()

    assert not (gallery_dir / SNAPSHOT_DIRNAME / MANIFEST_NAME).exists()
    assert not open_snapshotted(snapshots=small).recovery.from_snapshot


def test_a_background_snapshot_follows_enough_changes(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, gallery_dir: Path
) -> None:
    eager = SnapshotPolicy(min_faces=0, every_changes=100, min_interval_s=0)
    gallery = open_snapshotted(snapshots=eager)
    enroll(gallery, unit_vectors(120))
    manifest = gallery_dir / SNAPSHOT_DIRNAME / MANIFEST_NAME

    def only_the_manifest_is_recorded() -> bool:
        # The manifest is renamed into place before older records are retired, and a
        # first snapshot may already exist: wait until the thread has finished its work.
        if not manifest.is_file():
            return False
        with sqlite3.connect(gallery_dir / DB_FILENAME) as db:
            tokens = [row[0] for row in db.execute("SELECT token FROM index_snapshots")]
        return tokens == [json.loads(manifest.read_text())["token"]]

    gallery_thread_wait(only_the_manifest_is_recorded)


def gallery_thread_wait(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Wait for the gallery's background thread to make ``condition`` true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not done after {timeout_s} s")
        time.sleep(0.05)


def test_the_deletion_log_keeps_only_what_the_snapshot_needs(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, gallery_dir: Path
) -> None:
    gallery = open_snapshotted()
    enroll(gallery, unit_vectors(40))
    assert gallery.delete_subject("c", "s0") == 4  # a cascade: logged face by face

    def logged() -> list[int]:
        with sqlite3.connect(gallery_dir / DB_FILENAME) as db:
            return [row[0] for row in db.execute("SELECT face_row_id FROM deleted_faces")]

    assert logged() == [1, 2, 3, 4]
    gallery.close()
    assert logged() == []  # the snapshot reflects them


def test_faces_cannot_be_changed_in_place(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, gallery_dir: Path
) -> None:
    """A snapshot relies on it: a face row never changes, it is deleted and re-added."""
    gallery = open_snapshotted()
    enroll(gallery, unit_vectors(4))
    with (
        sqlite3.connect(gallery_dir / DB_FILENAME) as db,
        pytest.raises(sqlite3.IntegrityError, match="immutable"),
    ):
        db.execute("UPDATE faces SET subject = 'someone else'")


# Every write triggers a background snapshot, so the kill lands anywhere: in a
# transaction, between commit and index update, in the middle of writing snapshot
# files, between the manifest and its record.
WRITE_UNTIL_KILLED = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    import numpy as np
    from app.core.types import NewFace
    from app.gallery.embedded import EmbeddedGallery
    from app.gallery.embedded.snapshotter import SnapshotPolicy
    from app.gallery.embedded.vectors import IndexPolicy

    gallery = EmbeddedGallery(
        Path(sys.argv[1]), model_id=sys.argv[2], dim=int(sys.argv[3]),
        index_policy=IndexPolicy(hnsw_min_faces=200, hnsw_m=16, hnsw_ef_construction=40),
        snapshot_policy=SnapshotPolicy(min_faces=0, every_changes=1, min_interval_s=0),
    )
    vectors = np.load(sys.argv[4])
    for batch in range(len(vectors) // 10):
        rows = range(batch * 10, batch * 10 + 10)
        gallery.add_faces_bulk("c", [
            (f"s{row}", NewFace(hashlib.sha256(vectors[row].tobytes()).hexdigest(),
                                (0, 0, 9, 9), 0.9, vectors[row]))
            for row in rows
        ])
        if batch % 3 == 2:
            gallery.delete_subject("c", f"s{batch * 10}")
            print("DEL", batch * 10, flush=True)
        print("ACK", batch, flush=True)
    """
)
KILL_AFTER_ACKS = (5, 23, 41)


@pytest.mark.slow
@pytest.mark.parametrize("acks", KILL_AFTER_ACKS)
def test_kill_9_at_any_point_loses_nothing_and_answers_right(
    acks: int,
    open_snapshotted: OpenSnapshotted,
    unit_vectors: UnitVectors,
    near: NearVector,
    gallery_dir: Path,
    tmp_path: Path,
) -> None:
    vectors = unit_vectors(1000)
    np.save(tmp_path / "vectors.npy", vectors)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITE_UNTIL_KILLED,
            str(gallery_dir),
            MODEL_ID,
            str(DIM),
            str(tmp_path / "vectors.npy"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    batches: list[int] = []
    deleted: list[int] = []
    try:
        for line in child.stdout:
            kind, number = line.split()
            (batches if kind == "ACK" else deleted).append(int(number))
            if len(batches) >= acks:
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        remaining, errors = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, errors
    for line in remaining.splitlines():  # acknowledged before the kill, still in the pipe
        kind, number = line.split()
        (batches if kind == "ACK" else deleted).append(int(number))

    gallery = open_snapshotted()

    acknowledged = [row for batch in batches for row in range(batch * 10, batch * 10 + 10)]
    alive = [row for row in acknowledged if row not in deleted]
    results = gallery.search("c", np.stack([near(vectors[row]) for row in alive]), top_k=2)
    assert [hits[0].subject for hits in results] == [f"s{row}" for row in alive]
    everything = gallery.search("c", vectors, top_k=5)
    returned = {hit.subject for hits in everything for hit in hits}
    assert not returned & {f"s{row}" for row in deleted}
    # At most the batch in flight got in unacknowledged (and possibly its deletion).
    assert gallery.total_faces() - len(alive) in (0, 9, 10)
    assert gallery.stats() == {"c": gallery.total_faces()}


def test_close_finishes_a_rebuild_in_progress_and_snapshots_its_result(
    open_snapshotted: OpenSnapshotted, unit_vectors: UnitVectors, near: NearVector
) -> None:
    vectors = unit_vectors(FACES)
    gallery = open_snapshotted()
    enroll(gallery, vectors)  # crosses the threshold: HNSW is built in the background
    gallery.close()

    reopened = open_snapshotted()

    assert reopened.recovery.from_snapshot
    assert reopened.index_kinds() == {"c": "hnsw"}
    probes = np.stack([near(vector) for vector in vectors])
    assert top_subjects(reopened, probes) == [f"s{row // 4}" for row in range(FACES)]
