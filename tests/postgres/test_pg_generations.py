"""Gallery generations on PostgreSQL: the store pieces a model swap is made of.

Replicas here are ``PostgresGallery`` instances each on a ``Database`` of its own (its
own pool, listener and sessions), as separate server processes would be. Embeddings
are random unit vectors; the "new model" of a generation is a fixed random rotation
of the old space, so a face copied into it is found there by its rotated embedding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import psycopg
import pytest

from app.core.swap import ProgressBoard, SwapProgress, SyncControls, synchronise
from app.core.types import FloatArray, NewFace
from app.errors import (
    GalleryModelMismatch,
    GenerationRetired,
    ModelSwapRejected,
    ModelSwapRunning,
)
from app.gallery.postgres import PostgresGallery, replica
from app.gallery.postgres.generation_tables import WRITE_BARRIER_KEY
from app.gallery.postgres.generations import PostgresGenerations
from app.storage.postgres.database import Database
from app.storage.sqlite import utc_now
from tests.gallery.conftest import DIM, MODEL_ID, MakeFace, UnitVectors
from tests.postgres.conftest import OpenDatabase

NEW_MODEL = "test-recognizer-v2"
COLLECTION = "staff"
TIMEOUT_S = 60
# A PNG signature, then a label: the fake embedder below reads the label, not pixels.
PNG = b"\x89PNG\r\n\x1a\nface-"


def rotation(seed: int = 7) -> FloatArray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((DIM, DIM)))
    return q.astype(np.float32)


class Enrolled:
    """Faces enrolled with a crop that names their old embedding, so a fake 'new model'
    can embed the crop: new = old @ R."""

    def __init__(self, make_face: MakeFace, unit_vectors: UnitVectors) -> None:
        self._make_face = make_face
        self._unit_vectors = unit_vectors
        self.old: dict[bytes, FloatArray] = {}
        self.turn = rotation()

    def face(self) -> tuple[NewFace, FloatArray]:
        embedding = self._unit_vectors(1)[0]
        crop = PNG + str(len(self.old)).encode()
        self.old[crop] = embedding
        return self._make_face(embedding, aligned_png=crop), embedding

    def embed(self, crops: list[bytes]) -> FloatArray:
        return np.stack([self.old[crop] @ self.turn for crop in crops]).astype(np.float32)


@pytest.fixture
def enrolled(make_face: MakeFace, unit_vectors: UnitVectors) -> Enrolled:
    return Enrolled(make_face, unit_vectors)


def board() -> ProgressBoard:
    progress = ProgressBoard()
    progress.show(SwapProgress("activate", "loading", 1, NEW_MODEL, utc_now(), None))
    return progress


def new_generation(database: Database) -> int:
    store = PostgresGenerations(database)
    store.record_origin(
        model_id=MODEL_ID, dim=DIM, manifest_path="/m/old.json", manifest_sha256="a" * 64
    )
    created = store.create(
        model_id=NEW_MODEL,
        dim=DIM,
        manifest_path="/m/new.json",
        manifest_sha256="b" * 64,
        created_by="admin1",
    )
    return created.number


def swap(
    source: PostgresGallery,
    target: PostgresGallery,
    embed: Callable[[list[bytes]], FloatArray],
    store: PostgresGenerations,
    *,
    between_batches: Callable[[], object] = lambda: None,
) -> None:
    synchronise(
        source,
        target,
        embed,
        board(),
        switch=lambda: store.activate(target.generation, by="admin1"),
        controls=SyncControls(pause=between_batches, stopping=lambda: False, batch_size=2),
    )


def best(gallery: PostgresGallery, embedding: FloatArray) -> str | None:
    (hits,) = gallery.search(COLLECTION, embedding.reshape(1, -1), 1)
    return hits[0].subject if hits else None


def test_a_swap_copies_every_face_and_writes_made_meanwhile_by_another_replica(
    open_db: OpenDatabase, enrolled: Enrolled
) -> None:
    replica_a, replica_b = open_db(), open_db()
    on_a = PostgresGallery(replica_a, model_id=MODEL_ID, dim=DIM)
    on_b = PostgresGallery(replica_b, model_id=MODEL_ID, dim=DIM)
    before = {}
    for n in range(5):
        face, embedding = enrolled.face()
        on_a.add_faces(COLLECTION, f"person-{n}", [face])
        before[f"person-{n}"] = embedding
    store = PostgresGenerations(replica_a)
    number = new_generation(replica_a)
    target = PostgresGallery(replica_a, model_id=NEW_MODEL, dim=DIM, generation=number)
    late_face, late = enrolled.face()
    gone = on_a.get_subject(COLLECTION, "person-0")[1][0]
    writes_done = threading.Event()

    def write_on_b_once() -> None:
        if not writes_done.is_set():
            writes_done.set()
            on_b.add_faces(COLLECTION, "late", [late_face])
            on_b.delete_face(COLLECTION, gone.face_id)

    swap(on_a, target, enrolled.embed, store, between_batches=write_on_b_once)

    assert writes_done.is_set()
    assert store.active_number() == number
    assert target.face_ids() == on_a.face_ids()
    assert gone.face_id not in target.face_ids()
    assert best(target, late @ enrolled.turn) == "late"
    for subject, embedding in before.items():
        if subject != "person-0":
            assert best(target, embedding @ enrolled.turn) == subject
    # The old generation still answers searches (a replica that has not switched yet).
    assert best(on_b, before["person-3"]) == "person-3"
    for gallery in (on_a, on_b, target):
        gallery.close()


def test_after_the_flip_an_enrollment_into_the_old_generation_fails_with_retry_on_any_replica(
    open_db: OpenDatabase, enrolled: Enrolled
) -> None:
    replica_a, replica_b = open_db(), open_db()
    on_a = PostgresGallery(replica_a, model_id=MODEL_ID, dim=DIM)
    on_b = PostgresGallery(replica_b, model_id=MODEL_ID, dim=DIM)
    on_a.add_faces(COLLECTION, "ada", [enrolled.face()[0]])
    number = new_generation(replica_a)
    target = PostgresGallery(replica_a, model_id=NEW_MODEL, dim=DIM, generation=number)
    swap(on_a, target, enrolled.embed, PostgresGenerations(replica_a))

    for stale in (on_a, on_b):  # on_a sealed itself; on_b learns it from the database
        with pytest.raises(GenerationRetired) as refused:
            stale.add_faces(COLLECTION, "bruno", [enrolled.face()[0]])
        assert refused.value.code == "model_switched"
        with pytest.raises(GenerationRetired):
            stale.add_faces_bulk(COLLECTION, [("bruno", enrolled.face()[0])])
    assert [s.subject for s in on_b.list_subjects(COLLECTION, limit=10, offset=0)[0]] == ["ada"]
    on_b_new = PostgresGallery(replica_b, model_id=NEW_MODEL, dim=DIM, generation=number)
    face, embedding = enrolled.face()
    on_b_new.add_faces(COLLECTION, "bruno", [face])
    assert best(target, embedding) == "bruno"  # stored in the new generation's table
    for gallery in (on_a, on_b, target, on_b_new):
        gallery.close()


def test_an_enrollment_waits_at_the_barrier_and_then_fails_instead_of_landing_in_the_old_one(
    open_db: OpenDatabase, enrolled: Enrolled
) -> None:
    replica_a, replica_b = open_db(), open_db()
    on_a = PostgresGallery(replica_a, model_id=MODEL_ID, dim=DIM)
    on_b = PostgresGallery(replica_b, model_id=MODEL_ID, dim=DIM)
    number = new_generation(replica_a)
    store = PostgresGenerations(replica_a)
    errors: list[BaseException] = []
    waiting = threading.Event()

    def enroll_on_b() -> None:
        waiting.set()
        try:
            on_b.add_faces(COLLECTION, "waiter", [enrolled.face()[0]])
        except BaseException as error:
            errors.append(error)

    with on_a.hold_writes():
        writer = threading.Thread(target=enroll_on_b)
        writer.start()
        waiting.wait(TIMEOUT_S)
        with psycopg.connect(_url(replica_a)) as watcher:
            _wait_for_lock_waiter(watcher)
        store.activate(number, by=None)
    writer.join(TIMEOUT_S)

    assert [type(error) for error in errors] == [GenerationRetired]
    assert on_b.total_faces() == 0
    on_a.close()
    on_b.close()


def _url(database: Database) -> str:
    return database._url  # the test watches pg_locks on the same server


def _wait_for_lock_waiter(connection: psycopg.Connection[object]) -> None:
    """Until a session waits on an advisory lock (the enrollment at the barrier)."""
    for _ in range(TIMEOUT_S * 20):
        (waiting,) = connection.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone() or (0,)
        if waiting:
            return
        threading.Event().wait(0.05)
    raise AssertionError("the enrollment never reached the barrier")


def test_rollback_reembeds_only_the_faces_enrolled_since_into_generation_zero(
    open_db: OpenDatabase, enrolled: Enrolled
) -> None:
    database = open_db()
    zero = PostgresGallery(database, model_id=MODEL_ID, dim=DIM)
    old_face, old_embedding = enrolled.face()
    zero.add_faces(COLLECTION, "ada", [old_face])
    store = PostgresGenerations(database)
    number = new_generation(database)
    one = PostgresGallery(database, model_id=NEW_MODEL, dim=DIM, generation=number)
    swap(zero, one, enrolled.embed, store)
    since_face, since = enrolled.face()
    one.add_faces(COLLECTION, "bruno", [since_face])
    assert "bruno" not in {best(zero, since)}  # not in generation 0 yet

    embedded: list[int] = []

    def embed_back(crops: list[bytes]) -> FloatArray:
        embedded.append(len(crops))
        return np.stack([enrolled.old[crop] for crop in crops]).astype(np.float32)

    zero.set_sealed(False)
    synchronise(
        one,
        zero,
        embed_back,
        board(),
        switch=lambda: store.activate(0, by="admin1"),
        controls=SyncControls(pause=lambda: None, stopping=lambda: False),
    )

    assert sum(embedded) == 1  # bruno only: ada's generation-0 embedding was kept
    assert store.active_number() == 0
    assert store.active().previous == number  # type: ignore[union-attr]
    assert best(zero, since) == "bruno"
    assert best(zero, old_embedding) == "ada"
    for gallery in (zero, one):
        gallery.close()


def test_one_job_at_a_time_across_replicas_and_a_dead_job_is_discarded(
    open_db: OpenDatabase,
) -> None:
    replica_a, replica_b = open_db(), open_db()
    on_a, on_b = PostgresGenerations(replica_a), PostgresGenerations(replica_b)
    release = on_a.claim_job()
    number = new_generation(replica_a)
    with pytest.raises(ModelSwapRunning):
        on_b.claim_job()
    assert on_b.discard_abandoned() == []  # A's copy is alive: kept
    assert on_b.state(number) == "copying"
    release()  # as when A's process dies: its session, and the lock, end

    assert on_b.discard_abandoned() == [number]
    assert on_b.state(number) == "discarded"
    with psycopg.connect(_url(replica_b)) as connection:
        (table,) = connection.execute(
            "SELECT to_regclass(%s)", (f"face_vectors_{number}",)
        ).fetchone() or (None,)
    assert table is None
    assert on_b.active_number() == 0
    assert new_generation(replica_b) == number + 1  # numbers are never reused


def test_a_generation_opens_only_for_the_model_it_records(open_db: OpenDatabase) -> None:
    database = open_db()
    PostgresGallery(database, model_id=MODEL_ID, dim=DIM).close()
    number = new_generation(database)
    with pytest.raises(GalleryModelMismatch):
        PostgresGallery(database, model_id=MODEL_ID, dim=DIM, generation=number)


def test_activation_records_history_and_retiring_drops_old_tables(
    open_db: OpenDatabase, enrolled: Enrolled
) -> None:
    database = open_db()
    zero = PostgresGallery(database, model_id=MODEL_ID, dim=DIM)
    zero.add_faces(COLLECTION, "ada", [enrolled.face()[0]])
    store = PostgresGenerations(database)
    first = new_generation(database)
    store.activate(first, by="admin1")
    second = store.create(
        model_id="test-recognizer-v3",
        dim=DIM,
        manifest_path="/m/v3.json",
        manifest_sha256="c" * 64,
        created_by=None,
    ).number
    store.activate(second, by=None)
    third = store.create(
        model_id="test-recognizer-v4",
        dim=DIM,
        manifest_path="/m/v4.json",
        manifest_sha256="d" * 64,
        created_by=None,
    ).number
    store.activate(third, by="admin2")

    assert store.retire_older() == [first]
    assert [g.number for g in store.generations()] == [0, second, third]
    assert store.state(first) == "retired"
    (record,) = [g for g in store.generations() if g.number == third]
    assert [a.by for a in record.activations] == ["admin2"]
    assert store.active().previous == second  # type: ignore[union-attr]
    zero.close()


def test_the_barrier_refuses_a_source_that_no_longer_serves(
    open_db: OpenDatabase, enrolled: Enrolled
) -> None:
    """A job that lost its job lock (database restart) must not switch from a generation
    another job replaced: the faces enrolled into that one would be dropped."""
    database = open_db()
    zero = PostgresGallery(database, model_id=MODEL_ID, dim=DIM)
    number = new_generation(database)
    PostgresGenerations(database).activate(number, by=None)
    with pytest.raises(GenerationRetired), zero.hold_writes():
        raise AssertionError("the barrier must not be entered")
    zero.close()


def test_a_replica_on_a_retired_generation_answers_retry_not_an_error(
    open_db: OpenDatabase, enrolled: Enrolled
) -> None:
    database = open_db()
    PostgresGallery(database, model_id=MODEL_ID, dim=DIM).close()
    store = PostgresGenerations(database)
    first = new_generation(database)
    stale = PostgresGallery(database, model_id=NEW_MODEL, dim=DIM, generation=first)
    face, embedding = enrolled.face()
    store.activate(first, by=None)
    stale.add_faces(COLLECTION, "ada", [face])
    for model in ("test-recognizer-v3", "test-recognizer-v4"):
        later = store.create(
            model_id=model, dim=DIM, manifest_path="/m", manifest_sha256="e" * 64, created_by=None
        )
        store.activate(later.number, by=None)
    assert first in store.retire_older()

    with pytest.raises(GenerationRetired):
        stale.search(COLLECTION, embedding.reshape(1, -1), 1)
    stale.close()


def test_the_barrier_gives_up_the_switch_rather_than_stall_enrollments_behind_a_long_write(
    open_db: OpenDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica, "BARRIER_WAIT_S", 0.5)
    database = open_db()
    zero = PostgresGallery(database, model_id=MODEL_ID, dim=DIM)
    with psycopg.connect(_url(database)) as bulk_import, bulk_import.transaction():
        bulk_import.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_BARRIER_KEY,))
        with pytest.raises(ModelSwapRejected) as refused, zero.hold_writes():
            raise AssertionError("the barrier must not be entered")
    assert refused.value.details["reason"] == "writes_busy"
    zero.close()
