"""Landmarks averaged with the mirrored photo's (``augment.landmarks: mirror``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.types import Detection
from app.inference.catalog import resolve_manifest
from app.inference.image import decode_image
from app.inference.loader import build_detector, load_model
from app.inference.scrfd import (
    SAME_FACE_IOU,
    ScrfdDetector,
    average_landmarks,
    box_iou,
    unmirror,
)
from app.inference.session import RuntimeOptions

POINTS = np.array([[30, 40], [60, 41], [45, 55], [33, 70], [58, 71]], dtype=np.float32)


def test_unmirror_maps_pixel_centres_back_and_swaps_sides() -> None:
    width = 100
    mirrored_points = POINTS.copy()
    face = Detection(bbox=(20.0, 30.0, 70.0, 80.0), score=0.9, landmarks=mirrored_points)

    back = unmirror(face, width)

    assert back.bbox == (29.0, 30.0, 79.0, 80.0)  # x -> 99 - x, x1 and x2 swap
    np.testing.assert_allclose(back.landmarks[0], [99 - 60, 41])  # right eye -> left eye
    np.testing.assert_allclose(back.landmarks[2], [99 - 45, 55])
    np.testing.assert_allclose(back.landmarks[3], [99 - 58, 71])
    assert back.score == 0.9


def test_unmirror_twice_is_the_identity() -> None:
    face = Detection(bbox=(20.0, 30.0, 70.0, 80.0), score=0.9, landmarks=POINTS)
    twice = unmirror(unmirror(face, 100), 100)

    assert twice.bbox == face.bbox
    np.testing.assert_allclose(twice.landmarks, POINTS)


def test_average_landmarks_of_the_same_face_and_none_for_unmatched() -> None:
    face = Detection(bbox=(0.0, 0.0, 100.0, 100.0), score=0.9, landmarks=POINTS)
    other = Detection(bbox=(300.0, 0.0, 400.0, 100.0), score=0.8, landmarks=POINTS + 300)
    same = Detection(bbox=(2.0, 0.0, 101.0, 99.0), score=0.7, landmarks=POINTS + 2)

    refined = average_landmarks([face, other], [same], SAME_FACE_IOU)

    np.testing.assert_allclose(refined[0].landmarks, POINTS + 1)
    assert refined[0].bbox == face.bbox
    assert refined[0].score == face.score
    assert refined[1] is other


def test_the_default_recognizer_asks_for_mirrored_landmarks_and_says_so_in_its_id() -> None:
    mirror, _ = resolve_manifest("w600k_mbf_int8_mirror")
    fast, _ = resolve_manifest("w600k_mbf_int8_fast")

    assert mirror.augment.landmarks == "mirror"
    assert not mirror.augment.flip
    assert mirror.model_id.endswith("+dq+mirrorlm")
    assert mirror.model_id != fast.model_id  # another embedding: galleries are not mixed


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> ScrfdDetector:
    model = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=RuntimeOptions()
    )
    return build_detector(model)


@pytest.mark.parametrize("name", ["insightface_t1.jpg", "face_recognition_obama_and_biden.jpg"])
def test_refined_landmarks_stay_on_each_face_within_a_few_pixels(
    detector: ScrfdDetector, photos: Path, name: str
) -> None:
    image = decode_image((photos / name).read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26)
    found = detector.detect(image.pixels)

    refined = detector.refine_landmarks(image.pixels, found)

    assert len(refined) == len(found) >= 3
    moved = [np.abs(r.landmarks - f.landmarks).max() for r, f in zip(refined, found, strict=True)]
    sizes = [min(f.width, f.height) for f in found]
    assert all(0 < m <= 0.1 * s for m, s in zip(moved, sizes, strict=True))
    assert [r.bbox for r in refined] == [f.bbox for f in found]


def test_refinement_is_mirror_symmetric_on_a_symmetric_picture(
    detector: ScrfdDetector, photos: Path
) -> None:
    # Two faces pasted beside their own mirror image: the mirrored picture is the
    # picture, so each face's refined landmarks, mirrored, are its twin's.
    path = photos / "face_recognition_two_people.jpg"
    pixels = decode_image(path.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26).pixels
    half = pixels[:, :560]
    image = np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    width = image.shape[1]

    refined = detector.refine_landmarks(image, detector.detect(image))

    assert len(refined) >= 2
    for face in refined:
        mirrored = unmirror(face, width)
        twins = [other for other in refined if box_iou(other.bbox, mirrored.bbox) >= SAME_FACE_IOU]
        assert len(twins) == 1
        np.testing.assert_allclose(twins[0].landmarks, mirrored.landmarks, atol=0.05)
