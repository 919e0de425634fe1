"""FaceService on photos decoded at reduced scale: full-size coordinates, full-size crops
when a face needs them. Real models and photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.core.service import CROP_SIZE, every_face
from app.core.types import DecodedImage
from app.main import Runtime, build_runtime
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def runtime(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    built = build_runtime(make_settings(models_dir, tmp_path_factory.mktemp("gallery")))
    yield built
    built.close()


def test_faces_of_a_reduced_decode_come_back_in_full_size_coordinates(
    runtime: Runtime, photos: Path
) -> None:
    service = runtime.service
    data = (photos / "deepface_couple.jpg").read_bytes()  # 2280 x 1588, faces ~600 px
    assert service.decode(data).scale == 0.5

    image, faces = service.faces(data, every_face)
    reference = service.pipeline.analyze(service.decode_full(data).pixels)

    assert image.scale == 0.5  # the faces are large: their crops come from the reduced decode
    assert len(faces) == len(reference) == 2
    for face, full in zip(faces, reference, strict=True):
        assert np.abs(np.subtract(face.detection.bbox, full.detection.bbox)).max() <= 3.0
        assert np.abs(face.detection.landmarks - full.detection.landmarks).max() <= 3.0
        assert float(np.dot(face.embedding, full.embedding)) > 0.95


def test_small_faces_in_a_reduced_decode_are_aligned_from_the_full_image(
    runtime: Runtime, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = runtime.service
    data = (photos / "insightface_t1.jpg").read_bytes()  # 1280 x 886, faces ~100 px
    full_decodes: list[DecodedImage] = []
    decode_full = service.decode_full

    def counting(raw: bytes) -> DecodedImage:
        full_decodes.append(decode_full(raw))
        return full_decodes[-1]

    monkeypatch.setattr(service, "decode_full", counting)

    image, faces = service.faces(data, every_face)
    reference = service.pipeline.analyze(decode_full(data).pixels)

    assert len(full_decodes) == 1
    assert image.scale == 1.0
    assert min(min(f.detection.width, f.detection.height) for f in faces) < 2 * CROP_SIZE
    assert len(faces) == len(reference) == 6
    cosines = [
        float(np.dot(a.embedding, b.embedding)) for a, b in zip(faces, reference, strict=True)
    ]
    assert min(cosines) > 0.999
