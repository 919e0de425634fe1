"""``GalleryReader``: an embedded gallery's enrolled faces, read only, while the gallery
is open (its directory lock held) elsewhere. The cross-process case (a serving
``facerec serve`` and ``python -m training finetune --gallery``) is
tests/training/test_closed_loop.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from app.core.types import FloatArray, NewFace
from app.errors import GalleryModelMismatch, GalleryUnavailable
from app.gallery.embedded import EmbeddedGallery
from app.gallery.embedded.reader import GalleryReader
from app.gallery.embedded.schema import DB_FILENAME
from app.gallery.values import PNG_SIGNATURE
from tests.gallery.conftest import DIM, MODEL_ID

UnitVectors = Callable[[int], FloatArray]
MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., EmbeddedGallery]


def crop(label: str) -> bytes:
    return PNG_SIGNATURE + label.encode()


def read(reader: GalleryReader, collection: str) -> tuple[dict[str, FloatArray], list[str]]:
    embeddings = {
        face_id: vector
        for batch in reader.export_embeddings(collection, batch_size=2)
        for face_id, vector in zip(batch.face_ids, batch.embeddings, strict=True)
    }
    crops = [record.face_id for record, _ in reader.aligned_crops(collection)]
    return embeddings, crops


def test_reads_a_gallery_another_holder_has_open_as_of_one_moment(
    open_gallery: OpenGallery, gallery_dir: Path, make_face: MakeFace
) -> None:
    gallery = open_gallery()  # holds the directory lock, as the service does
    added = [
        record
        for subject in ("ada", "bruno", "chiara")
        for record, _ in gallery.add_faces(
            "staff", subject, [make_face(aligned_png=crop(f"{subject}{n}")) for n in range(2)]
        )
    ]
    gallery.add_faces("staff", "dora", [make_face()])  # no crop: exported, never a crop
    gallery.add_faces("other", "eve", [make_face(aligned_png=crop("eve"))])
    with closing(GalleryReader(gallery_dir, model_id=MODEL_ID, dim=DIM)) as reader:
        assert reader.dim == DIM
        # Written after the reader opened: not in its snapshot (both passes agree).
        (late, _), *_ = gallery.add_faces("staff", "late", [make_face(aligned_png=crop("l"))])
        embeddings, crops = read(reader, "staff")
        pairs = dict(reader.aligned_crops("staff"))
    assert crops == [record.face_id for record in added]
    assert len(embeddings) == len(added) + 1  # dora's, without a crop
    assert late.face_id not in embeddings
    stored = {
        face_id: vector
        for batch in gallery.export_embeddings("staff", batch_size=100)
        for face_id, vector in zip(batch.face_ids, batch.embeddings, strict=True)
    }
    for face_id, vector in embeddings.items():
        np.testing.assert_array_equal(vector, stored[face_id])
    assert {record.subject for record in pairs} == {"ada", "bruno", "chiara"}
    assert set(pairs.values()) == {
        crop(f"{s}{n}") for s in ("ada", "bruno", "chiara") for n in (0, 1)
    }
    # The holder's writes go on after the reader closed.
    gallery.add_faces("staff", "after", [make_face()])


def test_writes_nothing_and_reads_a_closed_gallery_too(
    open_gallery: OpenGallery, gallery_dir: Path, make_face: MakeFace
) -> None:
    gallery = open_gallery()
    gallery.add_faces("staff", "ada", [make_face(aligned_png=crop("a"))])
    gallery.close()
    database = gallery_dir / DB_FILENAME
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    with closing(GalleryReader(gallery_dir, model_id=MODEL_ID, dim=DIM)) as reader:
        _, crops = read(reader, "staff")
    assert len(crops) == 1
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before
    with pytest.raises(RuntimeError, match="closed"):
        read(reader, "staff")


def test_refuses_another_model_and_a_missing_gallery(
    open_gallery: OpenGallery, gallery_dir: Path, tmp_path: Path
) -> None:
    open_gallery()
    with pytest.raises(GalleryModelMismatch):
        GalleryReader(gallery_dir, model_id="another-model", dim=DIM)
    with pytest.raises(GalleryModelMismatch):
        GalleryReader(gallery_dir, model_id=MODEL_ID, dim=DIM + 1)
    with pytest.raises(GalleryUnavailable, match="no gallery database"):
        GalleryReader(tmp_path / "empty", model_id=MODEL_ID, dim=DIM)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / DB_FILENAME).write_bytes(b"not a database at all, just bytes" * 100)
    with pytest.raises(GalleryUnavailable):
        GalleryReader(tmp_path / "foreign", model_id=MODEL_ID, dim=DIM)
