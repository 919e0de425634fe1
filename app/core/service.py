"""Use-cases: enroll, identify, verify, embed. Pure domain logic, no HTTP."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from app.core.matching import assign_subjects
from app.core.pipeline import FacePipeline
from app.core.scaling import needs_full_resolution, rescale_detection
from app.core.types import DecodedImage, Detection, EmbeddedFace, FaceRecord, SearchHit
from app.errors import (
    FaceRecError,
    FaceTooSmall,
    LowDetectionScore,
    MultipleFaces,
    NoFaceDetected,
)
from app.gallery.store import Gallery, NewFace

FacePolicy = Literal["single", "largest"]
Decoder = Callable[[bytes], DecodedImage]
# Chooses, from a photo's detections in full-size coordinates, the ones to embed.
FaceChooser = Callable[[list[Detection]], list[Detection]]

# Side of the aligned crop below which a face found in a reduced-scale decode is
# aligned from the full-size image instead (the recognizer input; ArcFace 112).
CROP_SIZE = 112


def every_face(detections: list[Detection]) -> list[Detection]:
    return detections


def largest_face(detections: list[Detection]) -> list[Detection]:
    if not detections:
        raise NoFaceDetected("no face found in the image")
    return [max(detections, key=lambda d: d.area)]


@dataclass(frozen=True, slots=True)
class QualityGate:
    """What an enrollment face must satisfy."""

    min_face_size: int
    min_det_score: float


@dataclass(frozen=True, slots=True)
class Rejection:
    image: str
    error: FaceRecError


@dataclass(frozen=True, slots=True)
class EnrollResult:
    subject: str
    faces: list[tuple[FaceRecord, bool]]  # record, created (False: already enrolled)
    rejected: list[Rejection]


@dataclass(frozen=True, slots=True)
class IdentifiedFace:
    face: EmbeddedFace
    candidates: list[SearchHit]
    match: SearchHit | None


@dataclass(frozen=True, slots=True)
class Verification:
    similarity: float
    threshold: float
    match: bool


def select_enrollment_face(
    detections: Sequence[Detection], policy: FacePolicy, gate: QualityGate
) -> Detection:
    """The one face of an enrollment photo, or a domain error saying why there is none."""
    if not detections:
        raise NoFaceDetected("no face found in the image")
    if policy == "single" and len(detections) > 1:
        raise MultipleFaces(
            f"{len(detections)} faces found; enroll photos of one person, or set "
            "face_policy=largest to use the largest face",
            faces=len(detections),
        )
    face = max(detections, key=lambda d: d.area)
    shorter_side = min(face.width, face.height)
    if shorter_side < gate.min_face_size:
        raise FaceTooSmall(
            f"face is {shorter_side:.0f} px, at least {gate.min_face_size} px are needed",
            size=shorter_side,
        )
    if face.score < gate.min_det_score:
        raise LowDetectionScore(
            f"detector confidence {face.score:.2f} is below {gate.min_det_score:.2f}",
            det_score=face.score,
        )
    return face


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class FaceService:
    def __init__(
        self,
        pipeline: FacePipeline,
        gallery: Gallery,
        decoder: Decoder,
        *,
        threshold: float,
        gate: QualityGate,
        store_aligned_crops: bool = True,
        full_decoder: Decoder | None = None,
        cpu_stages: AbstractContextManager[object] | None = None,
    ) -> None:
        """``decoder`` may decode large JPEGs at reduced scale; ``full_decoder`` (the
        same limits, full size) is then used for photos whose faces need it.

        ``cpu_stages`` (e.g. a ``threading.Semaphore``) is held while a photo is
        decoded, searched for faces and aligned, and released before its crops wait
        for the recognizer: with one slot per core, the cores decode and detect
        the next photos while the recognizer (its own thread, batching) embeds.
        """
        self.cpu_stages: AbstractContextManager[object] = cpu_stages or nullcontext()
        self.pipeline = pipeline
        self.gallery = gallery
        self.decode = decoder
        self.decode_full = full_decoder or decoder
        self.threshold = threshold
        self.gate = gate
        self.store_aligned_crops = store_aligned_crops

    def embed(self, data: bytes) -> list[EmbeddedFace]:
        return self.faces(data, every_face)[1]

    def faces(self, data: bytes, choose: FaceChooser) -> tuple[DecodedImage, list[EmbeddedFace]]:
        """Decode, detect, let ``choose`` pick faces (full-size coordinates), embed them.

        Returned detections are in full-size coordinates whatever scale the photo
        was decoded at; the image returned is the one the crops came from.
        """
        with self.cpu_stages:
            image = self.decode(data)
            found = self.pipeline.detect(image.pixels)
            to_full = 1.0 / image.scale
            chosen = choose([rescale_detection(d, to_full) for d in found])
            if not chosen:
                return image, []
            if needs_full_resolution(
                [rescale_detection(d, image.scale) for d in chosen], image.scale, CROP_SIZE
            ):
                image = self.decode_full(data)
            located = [rescale_detection(d, image.scale) for d in chosen]
            refined = self.pipeline.refine(image.pixels, located)
            aligned = self.pipeline.align(image.pixels, refined)
        embedded = self.pipeline.embed_aligned(located, aligned)
        return image, [
            EmbeddedFace(detection=original, embedding=face.embedding, aligned=face.aligned)
            for original, face in zip(chosen, embedded, strict=True)
        ]

    def enroll(
        self,
        collection: str,
        subject: str,
        images: Sequence[tuple[str, bytes]],
        policy: FacePolicy,
    ) -> EnrollResult:
        """Enroll one face per image; bad images are rejected individually with a reason.

        Raises the first rejection's error when no image could be enrolled.
        """
        accepted: list[NewFace] = []
        rejected: list[Rejection] = []
        for name, data in images:
            try:
                image, (embedded,) = self.faces(
                    data, lambda found: [select_enrollment_face(found, policy, self.gate)]
                )
                face = embedded.detection
            except FaceRecError as error:
                rejected.append(Rejection(image=name, error=error))
                continue
            accepted.append(
                NewFace(
                    image_sha256=image.sha256,
                    bbox=face.bbox,
                    det_score=face.score,
                    embedding=embedded.embedding,
                    aligned_png=encode_png(embedded.aligned) if self.store_aligned_crops else None,
                )
            )
        if not accepted:
            first = rejected[0].error
            first.details.setdefault(
                "rejected",
                [
                    {"image": r.image, "code": r.error.code, "message": r.error.message}
                    for r in rejected
                ],
            )
            raise first
        faces = self.gallery.add_faces(collection, subject, accepted)
        return EnrollResult(subject=subject, faces=faces, rejected=rejected)

    def identify(
        self, collection: str, data: bytes, *, top_k: int, threshold: float | None
    ) -> tuple[list[IdentifiedFace], float]:
        """Every face in the photo with its best candidates; a subject matches at most one face."""
        limit = self.threshold if threshold is None else threshold
        faces = self.embed(data)
        if not faces:
            return [], limit
        queries = np.stack([face.embedding for face in faces])
        candidates = self.gallery.search(collection, queries, top_k)
        matches = assign_subjects(candidates, limit)
        identified = [
            IdentifiedFace(face=face, candidates=hits, match=match)
            for face, hits, match in zip(faces, candidates, matches, strict=True)
        ]
        return identified, limit

    def _largest_face(self, data: bytes) -> EmbeddedFace:
        _, (face,) = self.faces(data, largest_face)
        return face

    def verify_images(self, data_a: bytes, data_b: bytes, threshold: float | None) -> Verification:
        """Similarity of the largest face of each photo."""
        limit = self.threshold if threshold is None else threshold
        first, second = self._largest_face(data_a), self._largest_face(data_b)
        similarity = float(np.dot(first.embedding, second.embedding))
        return Verification(similarity=similarity, threshold=limit, match=similarity >= limit)

    def verify_subject(
        self, collection: str, data: bytes, subject: str, threshold: float | None
    ) -> Verification:
        """Similarity of the photo's largest face to the subject's closest enrolled face."""
        limit = self.threshold if threshold is None else threshold
        self.gallery.get_subject(collection, subject)  # 404 before spending inference
        face = self._largest_face(data)
        hit = self.gallery.best_match_for_subject(collection, subject, face.embedding)
        return Verification(
            similarity=hit.similarity, threshold=limit, match=hit.similarity >= limit
        )
