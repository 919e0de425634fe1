"""Galleries written by an older build are migrated in place at open."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from app.errors import NameConflict
from app.gallery.embedded.migrations import MIGRATIONS, SCHEMA_VERSION
from app.gallery.embedded.schema import DB_FILENAME
from tests.gallery.conftest import DIM, MODEL_ID, MakeFace, OpenGallery, UnitVectors


def write_version_1_gallery(directory: Path, vectors: np.ndarray) -> None:
    """A gallery as the first release wrote it: schema 1, 4 kB pages, two subjects."""
    directory.mkdir()
    with sqlite3.connect(directory / DB_FILENAME) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("schema_version", "1"),
                ("model_id", MODEL_ID),
                ("dim", str(DIM)),
                ("created_at", "2026-01-01T00:00:00+00:00"),
            ],
        )
        for subject in ("ada", "bob"):
            db.execute(
                "INSERT INTO subjects VALUES ('c', ?, '2026-01-01T00:00:00+00:00', "
                "'2026-01-01T00:00:00+00:00')",
                (subject,),
            )
        for row, vector in enumerate(vectors):
            db.execute(
                "INSERT INTO faces (face_id, collection, subject, image_sha256, x1, y1, x2, y2, "
                "det_score, model_id, created_at, embedding) "
                "VALUES (?, 'c', ?, ?, 0, 0, 9, 9, 0.9, ?, '2026-01-01T00:00:00+00:00', ?)",
                (
                    uuid.uuid4().hex,
                    "ada" if row < 2 else "bob",
                    f"{row:064x}",
                    MODEL_ID,
                    vector.astype("<f4").tobytes(),
                ),
            )


def test_a_version_1_gallery_is_migrated_and_keeps_its_faces(
    open_gallery: OpenGallery, gallery_dir: Path, unit_vectors: UnitVectors
) -> None:
    vectors = unit_vectors(4)
    write_version_1_gallery(gallery_dir, vectors)

    gallery = open_gallery()

    assert gallery.stats() == {"c": 4}
    assert [hits[0].subject for hits in gallery.search("c", vectors, top_k=1)] == [
        "ada",
        "ada",
        "bob",
        "bob",
    ]
    gallery.delete_subject("c", "ada")
    with sqlite3.connect(gallery_dir / DB_FILENAME) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        logged = db.execute("SELECT COUNT(*) FROM deleted_faces").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert logged == (2,)  # the migration's trigger logs the cascade


def test_a_new_gallery_uses_16_kb_pages(open_gallery: OpenGallery, gallery_dir: Path) -> None:
    open_gallery().close()
    with sqlite3.connect(gallery_dir / DB_FILENAME) as db:
        assert db.execute("PRAGMA page_size").fetchone() == (16_384,)


def write_version_2_gallery(directory: Path, subjects: list[tuple[str, str, str]]) -> None:
    """A gallery from before name keys (schema 2) holding ``(collection, subject,
    created_at)`` subjects with one face each: look-alikes included."""
    directory.mkdir()
    with sqlite3.connect(directory / DB_FILENAME) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for migration in MIGRATIONS[:2]:
            for statement in migration:
                db.execute(statement)
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("schema_version", "2"),
                ("model_id", MODEL_ID),
                ("dim", str(DIM)),
                ("created_at", "2026-01-01T00:00:00+00:00"),
            ],
        )
        vectors = np.eye(len(subjects), DIM, dtype=np.float32)
        for (collection, subject, created_at), vector in zip(subjects, vectors, strict=True):
            db.execute(
                "INSERT INTO subjects VALUES (?, ?, ?, ?)",
                (collection, subject, created_at, created_at),
            )
            db.execute(
                "INSERT INTO faces (face_id, collection, subject, image_sha256, x1, y1, x2, y2, "
                "det_score, model_id, created_at, embedding) "
                "VALUES (?, ?, ?, ?, 0, 0, 9, 9, 0.9, ?, ?, ?)",
                (
                    uuid.uuid4().hex,
                    collection,
                    subject,
                    uuid.uuid4().hex * 2,
                    MODEL_ID,
                    created_at,
                    vector.astype("<f4").tobytes(),
                ),
            )


LEGACY_SUBJECTS = [
    ("c", "ada", "2026-01-03T00:00:00+00:00"),
    ("c", "Ada", "2026-01-01T00:00:00+00:00"),  # the oldest of its key
    ("c", "ADA", "2026-01-02T00:00:00+00:00"),
    ("c", "Bob", "2026-01-02T00:00:00+00:00"),
    ("d", "ADA", "2026-01-05T00:00:00+00:00"),  # another collection: no look-alike
]


def name_key_rows(directory: Path) -> dict[tuple[str, str], tuple[str, int]]:
    with sqlite3.connect(directory / DB_FILENAME) as db:
        rows = db.execute("SELECT collection, name, name_key, look_alike FROM subjects")
        return {(row[0], row[1]): (row[2], row[3]) for row in rows}


def test_look_alikes_from_before_the_rule_survive_the_migration_and_are_marked(
    open_gallery: OpenGallery,
    gallery_dir: Path,
    make_face: MakeFace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_version_2_gallery(gallery_dir, LEGACY_SUBJECTS)

    with caplog.at_level(logging.WARNING, logger="app.gallery.look_alikes"):
        gallery = open_gallery()

    assert name_key_rows(gallery_dir) == {
        ("c", "Ada"): ("ada", 0),
        ("c", "ADA"): ("ada", 1),
        ("c", "ada"): ("ada", 1),
        ("c", "Bob"): ("bob", 0),
        ("d", "ADA"): ("ada", 0),
    }
    [warning] = [record.getMessage() for record in caplog.records]
    assert "holds 2 subject(s)" in warning
    assert "'c': 2" in warning
    assert "ada" not in warning.casefold()  # people's names stay out of logs
    # Every subject stays reachable by its exact name, faces and all.
    for collection, subject, _ in LEGACY_SUBJECTS:
        assert gallery.get_subject(collection, subject)[0].face_count == 1
    assert gallery.stats() == {"c": 4, "d": 1}
    # A marked look-alike still takes more faces under its exact name...
    assert gallery.look_alike_of("c", "ADA") is None
    gallery.add_faces("c", "ADA", [make_face()])
    assert gallery.get_subject("c", "ADA")[0].face_count == 2
    # ...but no new spelling gets in.
    assert gallery.look_alike_of("c", "aDa") == "Ada"
    with pytest.raises(NameConflict) as refused:
        gallery.add_faces("c", "aDa", [make_face()])
    assert refused.value.details["existing"] == "Ada"


def test_the_oldest_look_alike_takes_the_key_over_when_its_holder_goes(
    open_gallery: OpenGallery, gallery_dir: Path, make_face: MakeFace
) -> None:
    write_version_2_gallery(gallery_dir, LEGACY_SUBJECTS)
    gallery = open_gallery()

    gallery.delete_subject("c", "Ada")
    assert name_key_rows(gallery_dir)[("c", "ADA")] == ("ada", 0)
    assert name_key_rows(gallery_dir)[("c", "ada")] == ("ada", 1)
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


def test_a_migrated_gallery_reopens_without_migrating_again(
    open_gallery: OpenGallery, gallery_dir: Path
) -> None:
    write_version_2_gallery(gallery_dir, LEGACY_SUBJECTS)
    open_gallery().close()
    migrated = name_key_rows(gallery_dir)

    open_gallery().close()

    assert name_key_rows(gallery_dir) == migrated
