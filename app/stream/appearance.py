"""The appearance signal: a face's small crop descriptor, cheap enough for every face every frame.

A person stepping into the place of another (a kiosk, a door, a cut in the video)
keeps the tracker's box but not the face inside it. Each tracked face therefore
gets a ``FaceView`` per frame: one similarity warp of the frame onto a zoomed-out
ArcFace template at 64x64 pixels (the face with its hair, ears and a little
background, which differ between people more than the inner face does and
barely move with landmark jitter), from which

- ``signature``: the view shrunk to 32x32, blurred, zero-mean and unit-norm (all
  three colours). The dot product of two signatures is their normalised
  cross-correlation: close to 1 for the same face a frame later, much lower for
  somebody else at the same place;
- ``sharpness``: the Laplacian's variance over the grey view's variance, a
  contrast-independent measure of blur that feeds the crop's quality.

Measured by ``python -m bench.appearance`` (120 LFW people pasted on a 640x480
frame and detected by SCRFD-500M at 320 pixels, the stream's detector input): the
same photo moved by a few pixels and re-encoded as JPEG scored at least 0.959
against the best of its two previous frames; 7,140 pairs of different people
scored at most 0.884. ``SPLIT_SIMILARITY``
sits between. A view below it only makes the track *suspect*: the session then
compares embeddings before it splits the track, so a false alarm costs one
embedding, never a wrong split.

Pure numerics: no state, no model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from app.core.types import FloatArray, ImageArray
from app.inference.align import ARCFACE_SIZE, ARCFACE_TEMPLATE, similarity_transform

VIEW_SIDE = 64  # pixels of the warped view: enough for a blur measure, cheap to warp
SIGNATURE_SIDE = 32
# Template scaled about its centre: 0.7 fits the head and a margin around it.
VIEW_ZOOM = 0.7
SIGNATURE_BLUR_SIGMA = 1.2  # pixels at 32x32: hides landmark jitter, keeps the face's layout
# Below this best similarity to a track's recent signatures the face may be someone else.
SPLIT_SIMILARITY = 0.92
_VIEW_TEMPLATE: FloatArray = (
    (ARCFACE_TEMPLATE - ARCFACE_SIZE / 2) * VIEW_ZOOM + ARCFACE_SIZE / 2
) * np.float32(VIEW_SIDE / ARCFACE_SIZE)


@dataclass(frozen=True, slots=True)
class FaceView:
    signature: FloatArray  # (SIGNATURE_SIDE * SIGNATURE_SIDE * 3,), zero mean, unit norm
    sharpness: float  # var(Laplacian) / var(grey), >= 0


def view_face(image: ImageArray, landmarks: FloatArray) -> FaceView:
    """The appearance of the face whose five landmarks are given, in ``image`` (RGB)."""
    matrix = similarity_transform(landmarks, _VIEW_TEMPLATE)
    view = cv2.warpAffine(image, matrix, (VIEW_SIDE, VIEW_SIDE), flags=cv2.INTER_AREA)
    grey = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY).astype(np.float32)
    contrast = float(grey.var())
    sharpness = float(cv2.Laplacian(grey, cv2.CV_32F).var()) / contrast if contrast > 1.0 else 0.0
    small = cv2.resize(view, (SIGNATURE_SIDE, SIGNATURE_SIDE), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (5, 5), SIGNATURE_BLUR_SIGMA)
    return FaceView(signature=normalised(blurred), sharpness=sharpness)


def normalised(pixels: np.ndarray) -> FloatArray:
    """Pixels as a zero-mean, unit-norm vector (a flat patch gives the zero vector)."""
    vector = pixels.astype(np.float32).ravel()
    vector -= vector.mean()
    norm = float(np.linalg.norm(vector))
    result: FloatArray = vector / norm if norm > 1e-6 else np.zeros_like(vector)
    return result


def best_similarity(signature: FloatArray, references: Iterable[FloatArray]) -> float | None:
    """The highest normalised cross-correlation with any reference; None without references."""
    scores = [float(np.dot(signature, reference)) for reference in references]
    return max(scores) if scores else None
