"""The face pipeline: decoded image -> detections -> aligned crops -> embeddings."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from app.core.types import Detection, EmbeddedFace, FloatArray, ImageArray


class Detector(Protocol):
    def detect(self, image: ImageArray) -> list[Detection]: ...


class Embedder(Protocol):
    dim: int

    def embed(self, aligned_faces: ImageArray) -> FloatArray: ...


class Aligner(Protocol):
    def __call__(self, image: ImageArray, landmarks: FloatArray) -> ImageArray: ...


class FacePipeline:
    """Stateless orchestration; thread-safe as long as its collaborators are."""

    def __init__(self, detector: Detector, embedder: Embedder, aligner: Aligner) -> None:
        self.detector = detector
        self.embedder = embedder
        self.aligner = aligner

    def detect(self, image: ImageArray) -> list[Detection]:
        return self.detector.detect(image)

    def embed(self, image: ImageArray, detections: list[Detection]) -> list[EmbeddedFace]:
        """Align every detection and embed them all in one batch."""
        if not detections:
            return []
        aligned_faces = np.stack([self.aligner(image, d.landmarks) for d in detections])
        embeddings = self.embedder.embed(aligned_faces)
        return [
            EmbeddedFace(detection=d, embedding=e, aligned=a)
            for d, e, a in zip(detections, embeddings, aligned_faces, strict=True)
        ]

    def analyze(self, image: ImageArray) -> list[EmbeddedFace]:
        return self.embed(image, self.detect(image))
