"""Core value types. Frozen dataclasses; arrays are never mutated after creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
ImageArray = NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An upright RGB image (EXIF orientation already applied)."""

    pixels: ImageArray  # (H, W, 3) uint8, RGB
    sha256: str  # of the bytes as received
    format: str  # "JPEG", "PNG", "WEBP", "BMP"
    # Decoded pixels per pixel of the full image: < 1 when a large JPEG was decoded
    # at reduced scale (coordinates in ``pixels`` divided by it are full-size ones).
    scale: float = 1.0

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, slots=True)
class Detection:
    """One face found by the detector, in original image coordinates."""

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: FloatArray  # (5, 2): left eye, right eye, nose, left mouth, right mouth

    @property
    def width(self) -> float:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True, slots=True)
class EmbeddedFace:
    """A detection with its aligned crop and L2-normalised embedding."""

    detection: Detection
    embedding: FloatArray  # (D,), unit norm
    aligned: ImageArray = field(repr=False)  # (112, 112, 3) uint8 RGB


@dataclass(frozen=True, slots=True)
class NewFace:
    """One face to enroll: where it came from, its embedding and its aligned crop."""

    image_sha256: (
        str  # of the source image's bytes; with the subject, it makes enrolment idempotent
    )
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in the source image
    det_score: float
    embedding: FloatArray = field(repr=False)  # (D,) float32, unit norm
    aligned_png: bytes | None = field(default=None, repr=False)  # 112x112 aligned face, PNG


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """A face stored in the gallery."""

    face_id: str
    collection: str
    subject: str
    image_sha256: str
    bbox: tuple[float, float, float, float]
    det_score: float
    model_id: str
    created_at: datetime


def reembedded(record: FaceRecord, embedding: FloatArray, aligned_png: bytes) -> NewFace:
    """The stored face ``record`` as a face to enroll again, embedded anew from its crop
    (a model swap, ``training reembed``): same source image, box and score."""
    return NewFace(
        image_sha256=record.image_sha256,
        bbox=record.bbox,
        det_score=record.det_score,
        embedding=embedding,
        aligned_png=aligned_png,
    )


@dataclass(frozen=True, slots=True)
class SubjectSummary:
    collection: str
    subject: str
    face_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SearchHit:
    """Best similarity of one subject to a query embedding."""

    subject: str
    similarity: float
    face_id: str
