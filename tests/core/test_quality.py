"""Face quality numerics on hand-made landmarks and arrays, then on real LFW faces."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image, ImageFilter

from app.config import Settings
from app.core.quality import (
    DEFAULT_MIN_QUALITY,
    REASON_BLURRY,
    REASON_SMALL,
    REASON_TURNED,
    REASON_UNCERTAIN,
    Ramp,
    assess_face,
    estimate_pose,
    laplacian_variance,
)
from app.core.types import Detection
from app.inference.align import ARCFACE_TEMPLATE, align_face
from app.inference.loader import build_detector, load_model
from app.inference.session import RuntimeOptions

if TYPE_CHECKING:
    from conftest import LfwPhoto


def rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = points.mean(axis=0)
    return ((points - centre) @ rotation.T + centre).astype(np.float32)


def detection(landmarks: np.ndarray, size: float = 100.0, score: float = 0.9) -> Detection:
    return Detection(bbox=(0.0, 0.0, size, size), score=score, landmarks=landmarks)


def test_ramps_run_either_way_and_flag_the_bad_side_of_ok() -> None:
    rising, falling = Ramp(bad=10, good=20, ok=15), Ramp(bad=90, good=40, ok=55)

    assert [rising(v) for v in (0, 10, 15, 20, 30)] == [0, 0, 0.5, 1, 1]
    assert [falling(v) for v in (30, 40, 65, 90, 120)] == [1, 1, 0.5, 0, 0]
    assert rising.falls_short(14)
    assert not rising.falls_short(15)
    assert falling.falls_short(56)
    assert not falling.falls_short(55)


def test_the_arcface_template_is_a_frontal_upright_face() -> None:
    pose = estimate_pose(ARCFACE_TEMPLATE)

    assert abs(pose.yaw) < 1
    assert abs(pose.pitch) < 1
    assert abs(pose.roll) < 1


@pytest.mark.parametrize("degrees", [-40.0, -10.0, 25.0, 60.0])
def test_roll_is_the_eye_lines_angle_and_leaves_yaw_and_pitch_alone(degrees: float) -> None:
    pose = estimate_pose(rotated(ARCFACE_TEMPLATE, degrees))

    template_roll = estimate_pose(ARCFACE_TEMPLATE).roll  # its eyes are 0.2 px off level
    assert pose.roll == pytest.approx(template_roll + degrees, abs=0.01)
    assert abs(pose.yaw) < 1
    assert abs(pose.pitch) < 1


def test_a_nose_moved_towards_an_eye_turns_the_head_more_the_further_it_goes() -> None:
    yaws = []
    for shift in (0.0, 6.0, 12.0, 18.0):
        landmarks = ARCFACE_TEMPLATE.copy()
        landmarks[2, 0] -= shift  # towards the image's left
        yaws.append(estimate_pose(landmarks).yaw)
    mirrored = ARCFACE_TEMPLATE.copy()
    mirrored[2, 0] += 12.0

    assert yaws == sorted(yaws)
    assert yaws[0] == pytest.approx(0, abs=1)
    assert yaws[-1] > 45
    assert estimate_pose(mirrored).yaw == pytest.approx(-yaws[2], abs=0.01)


def test_coincident_eyes_are_a_degenerate_pose_not_a_crash() -> None:
    landmarks = np.tile(np.float32([[50, 50]]), (5, 1))

    assert estimate_pose(landmarks).yaw == 90.0


def test_laplacian_variance_is_zero_on_flat_grey_and_large_on_fine_detail() -> None:
    flat = np.full((112, 112, 3), 128, np.uint8)
    checker = ((np.indices((112, 112)).sum(axis=0) % 2) * 255).astype(np.uint8)

    assert laplacian_variance(flat) == 0
    assert laplacian_variance(np.dstack([checker] * 3)) > 10_000


def test_assessment_lists_each_shortcoming_as_a_reason() -> None:
    sharp = np.dstack([((np.indices((112, 112)).sum(axis=0) % 4) * 60).astype(np.uint8)] * 3)
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] = ARCFACE_TEMPLATE[0, 0] - 10  # the nose tip past the left eye: a profile

    good = assess_face(detection(ARCFACE_TEMPLATE), sharp)
    bad = assess_face(detection(turned, size=20, score=0.55), np.full((112, 112, 3), 90, np.uint8))

    assert good.score == 1.0
    assert good.reasons == ()
    assert bad.score < 0.01
    assert set(bad.reasons) == {REASON_SMALL, REASON_BLURRY, REASON_TURNED, REASON_UNCERTAIN}


def test_the_enrollment_default_is_the_measured_one() -> None:
    assert Settings.model_fields["min_quality"].default == DEFAULT_MIN_QUALITY


# --- real faces ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detect(models_dir: Path):  # type: ignore[no-untyped-def]
    options = RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
    model = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=options
    )
    return build_detector(model).detect


@pytest.mark.parametrize(("person", "number"), [("George_W_Bush", 7), ("Donald_Rumsfeld", 39)])
def test_a_blurred_copy_of_a_real_face_scores_lower_and_is_called_blurry(
    detect, lfw_photo: LfwPhoto, person: str, number: int
) -> None:  # type: ignore[no-untyped-def]
    with Image.open(lfw_photo(person, number)) as photo:
        sharp = np.asarray(photo.convert("RGB"))
        blurred = np.asarray(photo.convert("RGB").filter(ImageFilter.GaussianBlur(3)))
    qualities = []
    for pixels in (sharp, blurred):
        (face,) = detect(pixels)
        qualities.append(assess_face(face, align_face(pixels, face.landmarks)))
    original, degraded = qualities

    assert original.score >= DEFAULT_MIN_QUALITY
    assert REASON_BLURRY not in original.reasons
    assert degraded.score < DEFAULT_MIN_QUALITY
    assert REASON_BLURRY in degraded.reasons
    assert degraded.sharpness < original.sharpness / 4
