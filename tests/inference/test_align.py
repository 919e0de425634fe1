"""Similarity transform and ArcFace alignment, with hand-made landmarks and images."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from skimage.transform import SimilarityTransform

from app.inference.align import ARCFACE_SIZE, ARCFACE_TEMPLATE, align_face, similarity_transform


def apply(matrix: NDArray[np.float64], points: NDArray[np.float32]) -> NDArray[np.float64]:
    return points.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]


def similarity_matrix(angle_degrees: float, scale: float, shift: tuple[float, float]) -> NDArray:
    angle = np.deg2rad(angle_degrees)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[cos, -sin, shift[0]], [sin, cos, shift[1]]])


def random_faces(count: int, seed: int = 7) -> list[NDArray[np.float32]]:
    """Template-like landmark sets, each moved, turned, scaled and jittered."""
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        matrix = similarity_matrix(
            rng.uniform(-40, 40), rng.uniform(0.5, 4), rng.uniform(0, 800, 2)
        )
        jitter = rng.normal(0, 2.0, (5, 2))
        faces.append((apply(matrix, ARCFACE_TEMPLATE) + jitter).astype(np.float32))
    return faces


def test_template_onto_itself_is_the_identity() -> None:
    matrix = similarity_transform(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)

    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-5)


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.0, 1.0, (30.0, -12.0)), (25.0, 2.5, (-100.0, 40.0)), (-60.0, 0.3, (5.5, 7.25))],
)
def test_a_known_rotation_scale_and_translation_is_recovered(
    angle: float, scale: float, shift: tuple[float, float]
) -> None:
    # Landmarks in a photo are the template under the inverse of the wanted warp.
    truth = similarity_matrix(angle, scale, shift)
    inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    landmarks = apply(inverse, ARCFACE_TEMPLATE).astype(np.float32)

    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)

    np.testing.assert_allclose(matrix[:, :2], truth[:, :2], atol=1e-5 * max(scale, 1))
    np.testing.assert_allclose(matrix[:, 2], truth[:, 2], atol=1e-3)
    np.testing.assert_allclose(apply(matrix, landmarks), ARCFACE_TEMPLATE, atol=1e-3)


@pytest.mark.parametrize("landmarks", random_faces(8), ids=lambda _: "face")
def test_similarity_transform_agrees_with_scikit_image(landmarks: NDArray[np.float32]) -> None:
    reference = SimilarityTransform.from_estimate(landmarks, ARCFACE_TEMPLATE).params[:2]

    np.testing.assert_allclose(
        similarity_transform(landmarks, ARCFACE_TEMPLATE), reference, atol=1e-5
    )


def test_a_mirrored_face_agrees_with_scikit_image() -> None:
    # A reflection cannot be a similarity: both pick the best proper rotation.
    mirrored = ARCFACE_TEMPLATE * np.float32([-1, 1]) + np.float32([300, 0])

    reference = SimilarityTransform.from_estimate(mirrored, ARCFACE_TEMPLATE).params[:2]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)

    np.testing.assert_allclose(matrix, reference, atol=1e-5)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_coincident_landmarks_give_a_finite_matrix() -> None:
    landmarks = np.full((5, 2), 50.0, dtype=np.float32)

    assert np.isfinite(similarity_transform(landmarks, ARCFACE_TEMPLATE)).all()


@pytest.mark.parametrize("size", [112, 224])
def test_align_face_returns_a_square_crop_of_the_requested_size(size: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)

    aligned = align_face(image, random_faces(1)[0], size)

    assert aligned.shape == (size, size, 3)
    assert aligned.dtype == np.uint8


def test_landmarks_already_on_the_template_give_back_the_same_pixels() -> None:
    image = np.random.default_rng(1).integers(0, 256, (ARCFACE_SIZE, ARCFACE_SIZE, 3), np.uint8)

    np.testing.assert_array_equal(align_face(image, ARCFACE_TEMPLATE.copy()), image)


def test_a_face_at_the_template_shifted_by_whole_pixels_is_cut_out_unchanged() -> None:
    image = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    left, top = 130, 75

    aligned = align_face(image, ARCFACE_TEMPLATE + np.float32([left, top]))

    np.testing.assert_array_equal(aligned, image[top : top + 112, left : left + 112])


def test_outside_the_photo_is_black() -> None:
    image = np.full((112, 112, 3), 255, dtype=np.uint8)

    aligned = align_face(image, ARCFACE_TEMPLATE + np.float32([-56, 0]))

    assert (aligned[:, :50] == 0).all()
    assert (aligned[:, 60:] == 255).all()
