"""Galleries written by an older build are migrated in place at open."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import numpy as np

from app.gallery.embedded.migrations import MIGRATIONS, SCHEMA_VERSION
from app.gallery.embedded.schema import DB_FILENAME
from tests.gallery.conftest import DIM, MODEL_ID, OpenGallery, UnitVectors


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
