"""Look-alike subject names on PostgreSQL: replicas racing on one database, and databases
migrated from before name keys were stored (migration 0003 + the keys filled in at open)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from app.core.types import NewFace
from app.errors import NameConflict
from app.gallery.postgres import PostgresGallery
from app.gallery.postgres.schema import bind_model
from app.storage.postgres import open_database
from app.storage.postgres.migrations import bundled_migrations, migrate
from tests.gallery.conformance.test_look_alike_names import SPELLINGS, race_look_alikes
from tests.gallery.conftest import DIM, MODEL_ID
from tests.pgserver import PostgresServer
from tests.postgres.conftest import OpenReplica

MakeFace = Callable[..., NewFace]
REPLICAS = 3
RACE_ROUNDS = 5
# (collection, subject, day of January 2026 it was created): look-alikes included.
LEGACY_SUBJECTS = [
    ("c", "ada", 3),
    ("c", "Ada", 1),  # the oldest of its key
    ("c", "ADA", 2),
    ("c", "Bob", 2),
    ("d", "ADA", 5),  # another collection: no look-alike
]


def test_replicas_racing_with_look_alike_names_leave_exactly_one_subject(
    open_replica: OpenReplica, make_face: MakeFace
) -> None:
    replicas = [open_replica() for _ in range(REPLICAS)]
    for round_ in range(RACE_ROUNDS):
        race_look_alikes(replicas, f"race-{round_}", [make_face() for _ in SPELLINGS])


def test_a_look_alike_made_on_one_replica_is_refused_on_another(
    open_replica: OpenReplica, make_face: MakeFace
) -> None:
    replica_a, replica_b = open_replica(), open_replica()
    replica_a.add_faces("c", "Ada", [make_face()])

    assert replica_b.look_alike_of("c", "ADA") == "Ada"
    with pytest.raises(NameConflict) as refused:
        replica_b.add_faces("c", "ADA", [make_face()])
    assert refused.value.details == {"collection": "c", "existing": "Ada"}


@pytest.fixture
def version_2_url(postgres_server: PostgresServer) -> str:
    """A database at schema version 2 (before name keys) holding ``LEGACY_SUBJECTS``
    with one face each."""
    url = postgres_server.create_database(f"v2_{uuid.uuid4().hex[:16]}")
    with psycopg.connect(url) as connection:
        migrate(connection, bundled_migrations()[:2])
        with connection.transaction():
            bind_model(connection, model_id=MODEL_ID, dim=DIM, where="test")
            for number, (collection, subject, day) in enumerate(LEGACY_SUBJECTS):
                created = f"2026-01-{day:02d}T00:00:00+00:00"
                connection.execute(
                    "INSERT INTO collections (name) VALUES (%s) ON CONFLICT DO NOTHING",
                    (collection,),
                )
                (collection_id, subject_id) = connection.execute(
                    "INSERT INTO subjects (collection_id, name, created_at, updated_at) "
                    "SELECT id, %s, %s, %s FROM collections WHERE name = %s "
                    "RETURNING collection_id, id",
                    (subject, created, created, collection),
                ).fetchone() or (0, 0)
                vector = [1.0 if index == number else 0.0 for index in range(DIM)]
                connection.execute(
                    "INSERT INTO faces (face_id, collection_id, subject_id, image_sha256, "
                    "x1, y1, x2, y2, det_score, model_id, created_at, embedding) "
                    "VALUES (%s, %s, %s, %s, 0, 0, 9, 9, 0.9, %s, %s, %s::vector)",
                    (
                        uuid.uuid4().hex,
                        collection_id,
                        subject_id,
                        uuid.uuid4().hex * 2,
                        MODEL_ID,
                        created,
                        str(vector),
                    ),
                )
    return url


@pytest.fixture
def open_migrated(version_2_url: str) -> Iterator[Callable[[], PostgresGallery]]:
    opened: list[PostgresGallery] = []

    def open_() -> PostgresGallery:
        gallery = PostgresGallery(
            open_database(version_2_url), model_id=MODEL_ID, dim=DIM, owns_database=True
        )
        opened.append(gallery)
        return gallery

    yield open_
    for gallery in opened:
        gallery.close()


def name_key_rows(url: str) -> dict[tuple[str, str], tuple[str, bool]]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT c.name, s.name, s.name_key, s.look_alike FROM subjects s "
            "JOIN collections c ON c.id = s.collection_id"
        ).fetchall()
    return {(row[0], row[1]): (row[2], row[3]) for row in rows}


def test_look_alikes_from_before_the_rule_survive_the_migration_and_are_marked(
    open_migrated: Callable[[], PostgresGallery],
    version_2_url: str,
    make_face: MakeFace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.gallery.look_alikes"):
        gallery = open_migrated()

    assert name_key_rows(version_2_url) == {
        ("c", "Ada"): ("ada", False),
        ("c", "ADA"): ("ada", True),
        ("c", "ada"): ("ada", True),
        ("c", "Bob"): ("bob", False),
        ("d", "ADA"): ("ada", False),
    }
    [warning] = [record.getMessage() for record in caplog.records]
    assert "holds 2 subject(s)" in warning
    assert "'c': 2" in warning
    assert "ada" not in warning.casefold()  # people's names stay out of logs
    for collection, subject, _ in LEGACY_SUBJECTS:
        assert gallery.get_subject(collection, subject)[0].face_count == 1
    assert gallery.look_alike_of("c", "ADA") is None
    gallery.add_faces("c", "ADA", [make_face()])  # more faces under its exact name
    assert gallery.get_subject("c", "ADA")[0].face_count == 2
    with pytest.raises(NameConflict) as refused:
        gallery.add_faces("c", "aDa", [make_face()])
    assert refused.value.details["existing"] == "Ada"


def test_the_oldest_look_alike_takes_the_key_over_when_its_holder_goes(
    open_migrated: Callable[[], PostgresGallery], version_2_url: str, make_face: MakeFace
) -> None:
    gallery = open_migrated()

    gallery.delete_subject("c", "Ada")
    rows = name_key_rows(version_2_url)
    assert (rows[("c", "ADA")], rows[("c", "ada")]) == (("ada", False), ("ada", True))
    with pytest.raises(NameConflict) as refused:
        gallery.add_faces("c", "aDa", [make_face()])
    assert refused.value.details["existing"] == "ADA"

    (face,) = gallery.get_subject("c", "ADA")[1]
    gallery.delete_face("c", face.face_id)  # its last face: the subject goes too
    assert gallery.look_alike_of("c", "aDa") == "ada"
    gallery.delete_subject("c", "ada")
    gallery.add_faces("c", "aDa", [make_face()])
    assert [s.subject for s in gallery.list_subjects("c", limit=10, offset=0)[0]] == [
        "Bob",
        "aDa",
    ]


def test_keys_are_filled_in_once(
    open_migrated: Callable[[], PostgresGallery],
    version_2_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def keyed_at_open() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="app.gallery.postgres.store"):
            open_migrated().close()
        return [r.getMessage() for r in caplog.records if "name keys given" in r.getMessage()]

    assert keyed_at_open() == [
        f"name keys given to {len(LEGACY_SUBJECTS)} subjects written before they were kept"
    ]
    migrated = name_key_rows(version_2_url)

    assert keyed_at_open() == []
    assert name_key_rows(version_2_url) == migrated
