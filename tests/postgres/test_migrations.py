"""Schema migrations: applied in order once, recorded, safe when replicas start together."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from app.errors import GalleryUnavailable, SchemaTooNew
from app.gallery.postgres import PostgresGallery, repository
from app.gallery.postgres.generations import PostgresGenerations
from app.gallery.postgres.schema import INDEX_NAME, bind_model
from app.storage.postgres import open_database
from app.storage.postgres.migrations import bundled_migrations, migrate
from app.storage.postgres.vectors import fetch_vector_type, register_vectors
from app.storage.sqlite import utc_now
from tests.gallery.conftest import DIM, MODEL_ID, MakeFace, UnitVectors
from tests.pgserver import PostgresServer
from tests.postgres.conftest import OpenDatabase

STARTERS = 6
TIMEOUT_S = 120


@pytest.fixture
def empty_url(postgres_server: PostgresServer) -> str:
    """A database nothing has touched (not from the migrated template)."""
    return postgres_server.create_database(f"e_{uuid.uuid4().hex[:16]}")


def ledger(url: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT version, name, sha256 FROM facerec_schema_migrations ORDER BY version"
        ).fetchall()
    return [(int(version), name, sha256) for version, name, sha256 in rows]


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    migrations = bundled_migrations()
    assert [migration.version for migration in migrations] == list(range(1, len(migrations) + 1))
    assert all(migration.sql.strip() for migration in migrations)


def test_a_new_database_gets_every_migration_recorded(empty_url: str) -> None:
    open_database(empty_url).close()

    expected = [(m.version, m.name, m.sha256) for m in bundled_migrations()]
    assert ledger(empty_url) == expected


def test_reopening_applies_nothing_twice(empty_url: str) -> None:
    open_database(empty_url).close()
    first = ledger(empty_url)
    open_database(empty_url).close()
    assert ledger(empty_url) == first


def test_replicas_starting_together_migrate_once_and_bind_one_model(empty_url: str) -> None:
    start = threading.Barrier(STARTERS)
    errors: list[BaseException] = []
    galleries: list[PostgresGallery] = []
    lock = threading.Lock()

    def start_replica() -> None:
        try:
            start.wait()
            gallery = PostgresGallery(open_database(empty_url), model_id=MODEL_ID, dim=DIM)
            with lock:
                galleries.append(gallery)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start_replica) for _ in range(STARTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    try:
        assert errors == []
        assert len(galleries) == STARTERS
        assert [version for version, _, _ in ledger(empty_url)] == [
            m.version for m in bundled_migrations()
        ]
        with psycopg.connect(empty_url) as connection:
            meta = dict(connection.execute("SELECT key, value FROM facerec_meta").fetchall())
            indexes = connection.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'faces' AND indexname = %s",
                (INDEX_NAME,),
            ).fetchall()
        assert (meta["model_id"], meta["dim"]) == (MODEL_ID, str(DIM))
        assert len(indexes) == 1
    finally:
        for gallery in galleries:
            gallery.close()


def test_binding_fixes_the_column_dimension_and_indexes_inner_product_on_halfvec(
    empty_url: str,
) -> None:
    gallery = PostgresGallery(open_database(empty_url), model_id=MODEL_ID, dim=DIM)
    gallery.close()
    with psycopg.connect(empty_url) as connection:
        column = connection.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'faces'::regclass AND attname = 'embedding'"
        ).fetchone()
        (indexdef,) = connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (INDEX_NAME,)
        ).fetchone() or ("",)
    assert column == (f"vector({DIM})",)
    assert "USING hnsw" in indexdef
    assert f"halfvec({DIM})" in indexdef
    assert "halfvec_ip_ops" in indexdef


def test_a_database_migrated_by_newer_code_is_refused_untouched(
    empty_url: str, open_db: OpenDatabase
) -> None:
    open_database(empty_url).close()
    future = len(bundled_migrations()) + 1
    with psycopg.connect(empty_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO facerec_schema_migrations (version, name, sha256) "
            "VALUES (%s, 'from_the_future', 'x')",
            (future,),
        )
    before = ledger(empty_url)

    with pytest.raises(SchemaTooNew) as raised:
        open_db(empty_url)

    assert raised.value.code == "schema_too_new"
    assert raised.value.details["schema_version"] == future
    assert "Upgrade facerec" in raised.value.message
    assert ledger(empty_url) == before


def test_a_migration_edited_after_it_was_applied_is_refused(
    empty_url: str, open_db: OpenDatabase
) -> None:
    open_database(empty_url).close()
    with psycopg.connect(empty_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE facerec_schema_migrations SET sha256 = 'edited' WHERE version = 1"
        )

    with pytest.raises(GalleryUnavailable, match="differs from the one in this build"):
        open_db(empty_url)


def test_a_gallery_created_before_generations_migrates_and_serves_as_generation_zero(
    empty_url: str, make_face: MakeFace, unit_vectors: UnitVectors
) -> None:
    """A database left by the release before migration 0005 (schema 0004, a bound
    model, a face): the upgrade keeps every face where it was, as generation 0."""
    before_generations = [m for m in bundled_migrations() if m.version <= 4]
    embedding = unit_vectors(1)[0]
    with psycopg.connect(empty_url, autocommit=True) as connection:
        migrate(connection, before_generations)
        register_vectors(connection, fetch_vector_type(connection))
        with connection.transaction():
            bind_model(connection, model_id=MODEL_ID, dim=DIM, where="test")
            collection = repository.lock_collection(connection, "staff", create=True)
            assert collection is not None
            subject = repository.ensure_subject(connection, "staff", collection, "ada", utc_now())
            face = make_face(embedding)
            record = repository.new_record("staff", "ada", face, model_id=MODEL_ID, now=utc_now())
            repository.insert_face(connection, collection, subject, record, face)
    assert [version for version, _, _ in ledger(empty_url)] == [1, 2, 3, 4]

    database = open_database(empty_url)
    try:
        gallery = PostgresGallery(database, model_id=MODEL_ID, dim=DIM)
        (hits,) = gallery.search("staff", embedding.reshape(1, -1), 1)
        assert [(hit.subject, hit.face_id) for hit in hits] == [("ada", record.face_id)]
        assert PostgresGenerations(database).active() is None
        assert gallery.face_ids() == {record.face_id}
        gallery.close()
    finally:
        database.close()
    assert [version for version, _, _ in ledger(empty_url)] == [
        m.version for m in bundled_migrations()
    ]
    with psycopg.connect(empty_url) as connection:
        (nullable,) = connection.execute(
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_name = 'faces' AND column_name = 'embedding'"
        ).fetchone() or ("",)
    assert nullable == "YES"
