"""A face's stored aligned crop, read back by id (thumbnails), scoped to its collection
(every backend)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.core.gallery import Gallery
from app.core.types import NewFace
from app.errors import FaceNotFound

MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., Gallery]

PNG = b"\x89PNG\r\n\x1a\n" + b"crop bytes"


def test_a_stored_crop_comes_back_byte_for_byte(gallery: Gallery, make_face: MakeFace) -> None:
    ((with_crop, _), (without, _)) = gallery.add_faces(
        "staff", "Ada", [make_face(aligned_png=PNG), make_face()]
    )

    assert gallery.face_crop("staff", with_crop.face_id) == PNG
    assert gallery.face_crop("staff", without.face_id) is None


def test_a_crop_is_only_found_in_its_own_collection(gallery: Gallery, make_face: MakeFace) -> None:
    ((record, _),) = gallery.add_faces("staff", "Ada", [make_face(aligned_png=PNG)])

    with pytest.raises(FaceNotFound):
        gallery.face_crop("visitors", record.face_id)
    with pytest.raises(FaceNotFound):
        gallery.face_crop("staff", "no-such-face")


def test_crops_survive_a_reopen_and_go_with_their_face(
    open_gallery: OpenGallery, make_face: MakeFace
) -> None:
    first = open_gallery()
    ((record, _),) = first.add_faces("staff", "Ada", [make_face(aligned_png=PNG)])
    first.close()
    reopened = open_gallery()

    assert reopened.face_crop("staff", record.face_id) == PNG
    reopened.delete_face("staff", record.face_id)
    with pytest.raises(FaceNotFound):
        reopened.face_crop("staff", record.face_id)
