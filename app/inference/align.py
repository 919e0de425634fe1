"""5-point similarity alignment to the ArcFace 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from app.core.types import FloatArray, ImageArray

# Landmark positions (left eye, right eye, nose, left mouth, right mouth) of the
# canonical ArcFace crop at 112x112, as used to train every InsightFace recognizer.
ARCFACE_TEMPLATE: FloatArray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ARCFACE_SIZE = 112


def similarity_transform(source: FloatArray, target: FloatArray) -> NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping source to target.

    Umeyama (1991). The arithmetic deliberately mirrors scikit-image's
    ``SimilarityTransform.estimate`` as used by InsightFace, in the inputs' own
    precision and operation order: the warp rounds to 1/32 pixel, and a matrix
    that differs in the 6th digit changes some crop pixels by one grey level,
    which quantised recognizers notice. Returns the 2x3 affine matrix.
    """
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src_centered, dst_centered = source - src_mean, target - dst_mean
    covariance = dst_centered.T @ src_centered / source.shape[0]
    reflection = np.ones(2, dtype=np.float64)
    if np.linalg.det(covariance) < 0:
        reflection[-1] = -1
    u, singular, vt = np.linalg.svd(covariance)
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = u @ np.diag(reflection) @ vt
    variance = src_centered.var(axis=0).sum()
    # Coincident landmarks (variance 0) carry no scale: keep the crop's scale at 1.
    scale = 1.0 / variance * (singular @ reflection) if variance > 0 else 1.0
    matrix[:, 2] = dst_mean - scale * (matrix[:, :2] @ src_mean.T)
    matrix[:, :2] *= scale
    return matrix


def align_face(image: ImageArray, landmarks: FloatArray, size: int = ARCFACE_SIZE) -> ImageArray:
    """Warp the face whose 5 landmarks are given onto the ArcFace template (size x size)."""
    template = ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
    matrix = similarity_transform(landmarks, template)
    warped = cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
    return np.asarray(warped, dtype=np.uint8)
