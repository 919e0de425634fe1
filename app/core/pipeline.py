"""The face pipeline: decoded image -> detections -> aligned crops -> embeddings."""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from app.core.types import Detection, EmbeddedFace, FloatArray, ImageArray


class Detector(Protocol):
    def detect(self, image: ImageArray) -> list[Detection]: ...


class Embedder(Protocol):
    dim: int

    def embed(self, aligned_faces: ImageArray) -> FloatArray: ...


class LandmarkRefiner(Protocol):
    """Better landmarks for detections of ``image`` (same faces, same order)."""

    def __call__(self, image: ImageArray, detections: list[Detection]) -> list[Detection]: ...


class Aligner(Protocol):
    def __call__(self, image: ImageArray, landmarks: FloatArray) -> ImageArray: ...


class StageObserver(Protocol):
    """Told how long each stage took (metrics); must be cheap and thread-safe."""

    def stage_finished(self, stage: str, seconds: float) -> None: ...

    def batch_embedded(self, faces: int) -> None: ...

    def faces_dropped(self, faces: int) -> None: ...


class _NoObserver:
    def stage_finished(self, stage: str, seconds: float) -> None:
        pass

    def batch_embedded(self, faces: int) -> None:
        pass

    def faces_dropped(self, faces: int) -> None:
        pass


def keep_largest(detections: list[Detection], max_faces: int | None) -> list[Detection]:
    """The ``max_faces`` largest detections (by box area), in their original order."""
    if max_faces is None or len(detections) <= max_faces:
        return detections
    by_area = sorted(range(len(detections)), key=lambda i: detections[i].area, reverse=True)
    kept = sorted(by_area[:max_faces])
    return [detections[i] for i in kept]


class FacePipeline:
    """Stateless orchestration; thread-safe as long as its collaborators are.

    ``max_faces`` caps the faces processed per photo (the largest are kept), so
    a crowd photo costs a bounded amount of alignment and embedding.
    """

    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        aligner: Aligner,
        *,
        max_faces: int | None = None,
        observer: StageObserver | None = None,
        refiner: LandmarkRefiner | None = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.aligner = aligner
        self.refiner = refiner
        self.max_faces = max_faces
        self.observer: StageObserver = observer or _NoObserver()

    def detect(self, image: ImageArray, *, capped: bool = True) -> list[Detection]:
        """The photo's faces; ``capped``: only the ``max_faces`` largest (what is embedded).
        Uncapped is for decisions about the whole photo, such as "one person only"."""
        started = time.perf_counter()
        detections = self.detector.detect(image)
        self.observer.stage_finished("detect", time.perf_counter() - started)
        if not capped:
            return detections
        kept = keep_largest(detections, self.max_faces)
        if len(kept) < len(detections):
            self.observer.faces_dropped(len(detections) - len(kept))
        return kept

    def embed(
        self, image: ImageArray, detections: list[Detection], *, refine: bool = True
    ) -> list[EmbeddedFace]:
        """Refine landmarks (when configured and ``refine``), align every detection, and
        embed them in one batch.

        The faces returned carry the detections as given; only the crops use the
        refined landmarks. Live streams pass ``refine=False``: the refinement is one
        more detector pass over the whole frame, which would delay every name.
        """
        crops = self.align(image, self.refine(image, detections) if refine else detections)
        return self.embed_aligned(detections, crops)

    def refine(self, image: ImageArray, detections: list[Detection]) -> list[Detection]:
        """The recognizer's landmark refinement (``augment.landmarks``), or the detections."""
        if self.refiner is None or not detections:
            return detections
        started = time.perf_counter()
        refined = self.refiner(image, detections)
        self.observer.stage_finished("refine", time.perf_counter() - started)
        return refined

    def align(self, image: ImageArray, detections: list[Detection]) -> ImageArray:
        """(N, H, W, 3) crops of the detections, in their order."""
        if not detections:
            return np.empty((0, 0, 0, 3), dtype=np.uint8)
        started = time.perf_counter()
        aligned_faces = np.stack([self.aligner(image, d.landmarks) for d in detections])
        self.observer.stage_finished("align", time.perf_counter() - started)
        return aligned_faces

    def embed_aligned(
        self, detections: list[Detection], aligned_faces: ImageArray
    ) -> list[EmbeddedFace]:
        """Embed crops made by ``align`` (the recognizer may batch them with others)."""
        if not detections:
            return []
        started = time.perf_counter()
        embeddings = self.embedder.embed(aligned_faces)
        self.observer.stage_finished("embed", time.perf_counter() - started)
        self.observer.batch_embedded(len(detections))
        return [
            EmbeddedFace(detection=d, embedding=e, aligned=a)
            for d, e, a in zip(detections, embeddings, aligned_faces, strict=True)
        ]

    def analyze(self, image: ImageArray) -> list[EmbeddedFace]:
        return self.embed(image, self.detect(image))
