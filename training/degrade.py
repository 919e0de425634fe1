"""Camera-like degradation of aligned crops: the domain shift a deployment's cameras add.

One fixed, documented recipe (no randomness), applied to every face of an evaluation
set: the 112x112 crop is shrunk to ``SMALL_SIDE`` pixels (a face about that wide in the
frame) and scaled back up, blurred (``BLUR_SIGMA``), JPEG-compressed at
``JPEG_QUALITY`` and turned grey (an infrared / night camera), in that order.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

SMALL_SIDE = 32
BLUR_SIGMA = 1.0
JPEG_QUALITY = 40
DESCRIPTION = (
    f"each crop shrunk to {SMALL_SIDE}x{SMALL_SIDE} px and back, gaussian blur sigma "
    f"{BLUR_SIGMA}, JPEG quality {JPEG_QUALITY}, greyscale"
)


def degrade_face(face: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB -> the same size, degraded as the module docstring says."""
    height, width = face.shape[:2]
    small = cv2.resize(face, (SMALL_SIDE, SMALL_SIDE), interpolation=cv2.INTER_AREA)
    large = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(large, (0, 0), BLUR_SIGMA)
    ok, encoded = cv2.imencode(".jpg", blurred, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding of a crop failed")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ValueError("JPEG decoding of a crop failed")
    grey = cv2.cvtColor(decoded, cv2.COLOR_RGB2GRAY)
    result: NDArray[np.uint8] = np.repeat(grey[:, :, None], 3, axis=2)
    return result


def degrade_faces(faces: NDArray[np.uint8]) -> NDArray[np.uint8]:
    if faces.shape[0] == 0:
        return faces.copy()
    return np.stack([degrade_face(face) for face in faces])
