"""Searches from many threads while the index changes structure under them."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.core.types import FloatArray, NewFace
from app.gallery.embedded import EmbeddedGallery
from app.gallery.embedded.snapshotter import SnapshotPolicy
from app.gallery.embedded.vectors import IndexPolicy
from tests.gallery.conftest import DIM, MODEL_ID, NearVector, UnitVectors

SEARCHERS = 3
RESIDENTS = 250
POLICY = IndexPolicy(hnsw_min_faces=300, hnsw_m=16, hnsw_ef_construction=40)
EAGER_SNAPSHOTS = SnapshotPolicy(min_faces=0, every_changes=50, min_interval_s=0)


def as_faces(prefix: str, vectors: FloatArray) -> list[tuple[str, NewFace]]:
    return [
        (
            f"{prefix}{row}",
            NewFace(hashlib.sha256(vector.tobytes()).hexdigest(), (0, 0, 9, 9), 0.9, vector),
        )
        for row, vector in enumerate(vectors)
    ]


def test_searches_stay_right_while_the_index_converts_compacts_and_snapshots(
    gallery_dir: Path, unit_vectors: UnitVectors, near: NearVector
) -> None:
    gallery = EmbeddedGallery(
        gallery_dir,
        model_id=MODEL_ID,
        dim=DIM,
        index_policy=POLICY,
        snapshot_policy=EAGER_SNAPSHOTS,
    )
    residents, newcomers = unit_vectors(RESIDENTS), unit_vectors(400)
    gallery.add_faces_bulk("c", as_faces("resident", residents))
    probes = np.stack([near(vector) for vector in residents[::5]])
    expected = [f"resident{row}" for row in range(0, RESIDENTS, 5)]
    writing = threading.Event()
    writing.set()
    errors: list[BaseException] = []
    searches = [0] * SEARCHERS

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as error:
                errors.append(error)

        return run

    def search(slot: int) -> Callable[[], None]:
        def loop() -> None:
            while writing.is_set() or searches[slot] == 0:
                results = gallery.search("c", probes, top_k=3)
                assert [hits[0].subject for hits in results] == expected
                searches[slot] += 1

        return loop

    def write() -> None:
        try:
            for start in range(0, 400, 50):  # crosses 300: exact -> HNSW
                gallery.add_faces_bulk("c", as_faces("new", newcomers)[start : start + 50])
            for row in range(0, 400, 2):  # 200 of 650 dead: compaction
                gallery.delete_subject("c", f"new{row}")
        finally:
            writing.clear()

    assert gallery.index_kinds() == {"c": "exact"}
    threads = [threading.Thread(target=guarded(search(slot))) for slot in range(SEARCHERS)]
    threads.append(threading.Thread(target=guarded(write)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not [thread for thread in threads if thread.is_alive()]
    assert errors == []
    assert all(searches)
    assert gallery.wait_until_indexed(timeout_s=120)
    assert gallery.index_kinds() == {"c": "hnsw"}
    assert gallery.total_faces() == RESIDENTS + 200
    gallery.close()
