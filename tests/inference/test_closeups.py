"""Close-ups: a face filling the frame gets the padded pass too, and the better detection.

Pure numerics on hand-made detections, then the real detector on CFP frontal
close-ups where the first pass finds the face with a score below the service's
enrollment gate (0.6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.types import Detection
from app.inference.image import decode_image
from app.inference.loader import build_detector, load_model
from app.inference.scrfd import (
    CLOSEUP_FILL,
    CLOSEUP_SCORE,
    SAME_FACE_IOU,
    ScrfdDetector,
    box_iou,
    choose_input_size,
    fills_frame,
    merge_passes,
)
from app.inference.session import RuntimeOptions

ENROLL_MIN_SCORE = 0.6  # Settings.min_det_score default


def face(x1: float, y1: float, x2: float, y2: float, score: float) -> Detection:
    points = np.full((5, 2), [(x1 + x2) / 2, (y1 + y2) / 2], dtype=np.float32)
    return Detection(bbox=(x1, y1, x2, y2), score=score, landmarks=points)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (2, 2, 8, 8), 36 / 100),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),
    ],
)
def test_box_iou_of_hand_made_boxes(
    first: tuple[float, ...], second: tuple[float, ...], expected: float
) -> None:
    assert box_iou(first, second) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("box", "fills"),
    [
        ((10, 10, 60, 60), False),  # 50% of 100 x 100
        ((0, 10, 60, 50), True),  # 60% of the width
        ((40, 0, 70, 60), True),  # 60% of the height
    ],
)
def test_fills_frame_at_the_close_up_fraction(
    box: tuple[float, float, float, float], fills: bool
) -> None:
    x1, y1, x2, y2 = box
    assert fills_frame([face(x1, y1, x2, y2, 0.9)], 100, 100, CLOSEUP_FILL) is fills


def test_merge_keeps_the_better_scored_detection_of_the_same_face() -> None:
    weak = face(0, 0, 90, 100, 0.55)
    strong = face(2, 1, 91, 99, 0.85)

    assert merge_passes([weak], [strong], SAME_FACE_IOU) == [strong]
    assert merge_passes([strong], [weak], SAME_FACE_IOU) == [strong]


def test_merge_adds_faces_only_one_pass_found_and_orders_by_score() -> None:
    close_up = face(0, 0, 90, 100, 0.6)
    other = face(200, 0, 260, 70, 0.9)

    assert merge_passes([close_up], [other], SAME_FACE_IOU) == [other, close_up]


# --- the real detector on CFP close-ups ---------------------------------------------------

# CFP frontal photos whose face the first pass scores below the enrollment gate.
WEAK_FIRST_PASS = ("002/frontal/01.jpg", "003/frontal/09.jpg", "050/frontal/01.jpg")


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> ScrfdDetector:
    model = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=RuntimeOptions()
    )
    return build_detector(model)


@pytest.mark.parametrize("name", WEAK_FIRST_PASS)
def test_a_close_up_found_weakly_at_first_is_kept_from_the_padded_pass(
    detector: ScrfdDetector, data_root: Path, name: str
) -> None:
    path = data_root / "cfp" / "images" / name
    image = decode_image(path.read_bytes(), max_bytes=1 << 24, max_pixels=1 << 24).pixels
    height, width = image.shape[:2]
    first = detector.detect(image, choose_input_size(width, height, detector.manifest.input))  # type: ignore[arg-type]

    found = detector.detect(image)

    assert len(first) == 1
    assert first[0].score < ENROLL_MIN_SCORE  # the failure this fixes
    assert fills_frame(first, width, height, CLOSEUP_FILL)
    best = found[0]
    assert best.score >= ENROLL_MIN_SCORE
    assert box_iou(best.bbox, first[0].bbox) >= SAME_FACE_IOU  # the same face
    x1, y1, x2, y2 = best.bbox
    assert np.all((best.landmarks >= [x1, y1]) & (best.landmarks <= [x2, y2]))


def test_a_photo_whose_faces_do_not_fill_it_gets_one_pass(
    detector: ScrfdDetector, photos: Path
) -> None:
    image = decode_image(
        (photos / "insightface_t1.jpg").read_bytes(), max_bytes=1 << 24, max_pixels=1 << 24
    ).pixels
    height, width = image.shape[:2]
    first = detector.detect(image, choose_input_size(width, height, detector.manifest.input))  # type: ignore[arg-type]

    assert not fills_frame(first, width, height, CLOSEUP_FILL)
    assert [(d.bbox, d.score) for d in detector.detect(image)] == [(d.bbox, d.score) for d in first]


def test_a_confident_face_filling_the_frame_keeps_its_one_pass(
    detector: ScrfdDetector, data_root: Path
) -> None:
    path = data_root / "lfw" / "images" / "Al_Sharpton" / "Al_Sharpton_0004.jpg"
    image = decode_image(path.read_bytes(), max_bytes=1 << 24, max_pixels=1 << 24).pixels
    height, width = image.shape[:2]
    first = detector.detect(image, choose_input_size(width, height, detector.manifest.input))  # type: ignore[arg-type]

    assert fills_frame(first, width, height, CLOSEUP_FILL)
    assert min(d.score for d in first) >= CLOSEUP_SCORE
    assert [(d.bbox, d.score) for d in detector.detect(image)] == [(d.bbox, d.score) for d in first]
