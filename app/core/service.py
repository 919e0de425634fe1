"""Use-cases: enroll, identify, verify, embed. Pure domain logic, no HTTP."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from app.core.gallery import Gallery
from app.core.lookalikes import LookalikeReports
from app.core.matching import assign_subjects
from app.core.names import name_conflict
from app.core.openset import OpenSetThreshold, fixed_threshold
from app.core.pipeline import FacePipeline
from app.core.quality import DEFAULT_MIN_QUALITY, FaceQuality, assess_face
from app.core.scaling import needs_full_resolution, rescale_detection
from app.core.thresholds import ThresholdPolicy
from app.core.types import DecodedImage, Detection, EmbeddedFace, FaceRecord, NewFace, SearchHit
from app.errors import (
    FaceRecError,
    FaceTooSmall,
    InvalidRequest,
    LowDetectionScore,
    LowQuality,
    MatchesOtherSubject,
    MultipleFaces,
    NoFaceDetected,
    RequestTooLarge,
)

FacePolicy = Literal["single", "largest"]
Decoder = Callable[[bytes], DecodedImage]
# Pixels an image's header declares, without decoding it (0: not an accepted image).
PixelProbe = Callable[[bytes], int]
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
    min_quality: float = DEFAULT_MIN_QUALITY


# Enrollment looks at this many nearest subjects to find one other than the enrolled one.
DUPLICATE_SEARCH_TOP_K = 2
MATCHES_OTHER_SUBJECT = "matches_other_subject"


@dataclass(frozen=True, slots=True)
class AnalysedFace:
    """A face found in a photo: its detection, embedding and crop, and its quality."""

    face: EmbeddedFace
    quality: FaceQuality


@dataclass(frozen=True, slots=True)
class EnrolledFace:
    record: FaceRecord
    created: bool  # False: this photo was already enrolled for the subject
    quality: FaceQuality


@dataclass(frozen=True, slots=True)
class EnrollmentFace:
    """A face that passed the enrollment gates, not stored yet."""

    image: str  # the photo's name in the request
    face: NewFace
    quality: FaceQuality


@dataclass(frozen=True, slots=True)
class OtherSubjectMatch:
    """An enrolled photo whose face already matches another subject above the threshold."""

    image: str
    subject: str
    similarity: float
    face_id: str


@dataclass(frozen=True, slots=True)
class Rejection:
    image: str
    error: FaceRecError


@dataclass(frozen=True, slots=True)
class EnrollResult:
    subject: str
    faces: list[EnrolledFace]
    rejected: list[Rejection]
    matches_other_subjects: list[OtherSubjectMatch]  # warnings (refused when strict)


@dataclass(frozen=True, slots=True)
class IdentifiedFace:
    face: EmbeddedFace
    quality: FaceQuality
    candidates: list[SearchHit]
    match: SearchHit | None
    # Subjects whose faces are at or above the threshold to the match's (look-alikes).
    lookalikes: list[tuple[str, float]] = field(default_factory=list)


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


def require_quality(quality: FaceQuality, gate: QualityGate) -> None:
    """Raise ``LowQuality`` (with the score and its reasons) under the gate's minimum."""
    if quality.score < gate.min_quality:
        reasons = ", ".join(quality.reasons) or "several small shortcomings"
        raise LowQuality(
            f"face quality {quality.score:.2f} is below {gate.min_quality:.2f} ({reasons})",
            quality=quality.score,
            min_quality=gate.min_quality,
            reasons=list(quality.reasons),
        )


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
        probe: PixelProbe | None = None,
        max_request_pixels: int | None = None,
        full_decoder: Decoder | None = None,
        cpu_stages: AbstractContextManager[object] | None = None,
        thresholds: ThresholdPolicy | None = None,
        lookalikes: LookalikeReports | None = None,
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
        self.probe = probe
        self.max_request_pixels = max_request_pixels
        # Identification's per-collection thresholds; None: ``threshold`` everywhere.
        self.thresholds = thresholds
        # Look-alike subject pairs per collection; None: matches are never flagged.
        self.lookalikes = lookalikes

    def close_background(self) -> None:
        """Stop the background work the use cases started (look-alike scans); the
        gallery and models are closed by their owner, after this."""
        if self.lookalikes is not None:
            self.lookalikes.close()

    def check_subject_name(self, collection: str, subject: str) -> None:
        """Refuse a look-alike of another subject before any inference is spent
        (``NameConflict``); the gallery's write decides again, atomically."""
        existing = self.gallery.look_alike_of(collection, subject)
        if existing is not None:
            raise name_conflict(collection, subject, existing)

    def check_request_pixels(self, images: Sequence[bytes]) -> None:
        """Refuse a request whose images declare more pixels in all than allowed, before
        any of them is decoded (``RequestTooLarge``)."""
        if self.probe is None or self.max_request_pixels is None:
            return
        total = sum(self.probe(data) for data in images)
        if total > self.max_request_pixels:
            raise RequestTooLarge(
                f"the request's images declare {total} pixels in all; at most "
                f"{self.max_request_pixels} are accepted per request "
                "(FACEREC_MAX_REQUEST_PIXELS)",
                pixels=total,
                max_pixels=self.max_request_pixels,
            )

    def embed(self, data: bytes) -> list[AnalysedFace]:
        return [
            AnalysedFace(face=face, quality=assess_face(face.detection, face.aligned))
            for face in self.faces(data, every_face)[1]
        ]

    def faces(
        self, data: bytes, choose: FaceChooser, *, capped: bool = True
    ) -> tuple[DecodedImage, list[EmbeddedFace]]:
        """Decode, detect, let ``choose`` pick faces (full-size coordinates), embed them.

        Returned detections are in full-size coordinates whatever scale the photo
        was decoded at; the image returned is the one the crops came from.
        ``capped=False`` lets ``choose`` see every face, not only the
        ``max_faces`` largest (for decisions such as "one person only").
        """
        with self.cpu_stages:
            image = self.decode(data)
            found = self.pipeline.detect(image.pixels, capped=capped)
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
        *,
        strict: bool = False,
    ) -> EnrollResult:
        """Enroll one face per image; bad images are rejected individually with a reason.

        Raises the first rejection's error when no image could be enrolled. A face that
        already matches another subject at or above the threshold is reported in
        ``matches_other_subjects``; with ``strict`` nothing is enrolled then
        (``MatchesOtherSubject``). The HTTP route runs the same steps with one inference
        turn per image.
        """
        self.check_subject_name(collection, subject)
        self.check_request_pixels([data for _, data in images])
        outcomes = [self.enrollment_face(name, data, policy) for name, data in images]
        return self.commit_enrollment(collection, subject, outcomes, strict=strict)

    def enrollment_face(
        self, name: str, data: bytes, policy: FacePolicy
    ) -> EnrollmentFace | Rejection:
        """The face one enrollment photo contributes, or why it contributes none."""
        try:
            # Every face counts for the policy: "single" refuses a group photo even
            # when max_faces_per_image would embed only its largest face.
            image, (embedded,) = self.faces(
                data,
                lambda found: [select_enrollment_face(found, policy, self.gate)],
                capped=False,
            )
            return self.gated_face(name, image.sha256, embedded)
        except FaceRecError as error:
            return Rejection(image=name, error=error)

    def gated_face(self, name: str, source_sha256: str, embedded: EmbeddedFace) -> EnrollmentFace:
        """An embedded face as an enrollment candidate, once it passes the quality gate."""
        quality = assess_face(embedded.detection, embedded.aligned)
        require_quality(quality, self.gate)
        new_face = NewFace(
            image_sha256=source_sha256,
            bbox=embedded.detection.bbox,
            det_score=embedded.detection.score,
            embedding=embedded.embedding,
            aligned_png=encode_png(embedded.aligned) if self.store_aligned_crops else None,
        )
        return EnrollmentFace(image=name, face=new_face, quality=quality)

    def commit_enrollment(
        self,
        collection: str,
        subject: str,
        outcomes: Sequence[EnrollmentFace | Rejection],
        *,
        strict: bool = False,
    ) -> EnrollResult:
        """Store the accepted faces (one transaction), refusing a look-alike subject name."""
        if not outcomes:
            raise InvalidRequest("an enrollment needs at least one image")
        accepted = [outcome for outcome in outcomes if isinstance(outcome, EnrollmentFace)]
        rejected = [outcome for outcome in outcomes if isinstance(outcome, Rejection)]
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
        others = self._matches_of_other_subjects(collection, subject, accepted)
        if strict and others:
            raise MatchesOtherSubject(
                f"{others[0].image} matches {others[0].subject!r} "
                f"(similarity {others[0].similarity:.3f}, threshold {self.threshold:.3f}); "
                "nothing was enrolled",
                threshold=self.threshold,
                matches=[
                    {"image": m.image, "subject": m.subject, "similarity": m.similarity}
                    for m in others
                ],
            )
        stored = self.gallery.add_faces(collection, subject, [a.face for a in accepted])
        faces = [
            EnrolledFace(record=record, created=created, quality=candidate.quality)
            for (record, created), candidate in zip(stored, accepted, strict=True)
        ]
        return EnrollResult(
            subject=subject, faces=faces, rejected=rejected, matches_other_subjects=others
        )

    def _matches_of_other_subjects(
        self, collection: str, subject: str, faces: Sequence[EnrollmentFace]
    ) -> list[OtherSubjectMatch]:
        """For each new face, the most similar other subject when it is at the threshold."""
        queries = np.stack([candidate.face.embedding for candidate in faces])
        found = []
        for candidate, hits in zip(
            faces, self.gallery.search(collection, queries, DUPLICATE_SEARCH_TOP_K), strict=True
        ):
            other = next((hit for hit in hits if hit.subject != subject), None)
            if other is not None and other.similarity >= self.threshold:
                found.append(
                    OtherSubjectMatch(
                        image=candidate.image,
                        subject=other.subject,
                        similarity=other.similarity,
                        face_id=other.face_id,
                    )
                )
        return found

    def identification_threshold(
        self, collection: str, *, threshold: float | None, target_fpir: float | None
    ) -> OpenSetThreshold:
        """What ``identify`` applies in ``collection``: the request's threshold, else the
        one derived for the target FPIR at the collection's size (``ThresholdPolicy``)."""
        if self.thresholds is not None:
            return self.thresholds.threshold(
                collection, target_fpir=target_fpir, threshold=threshold
            )
        size = self.gallery.stats().get(collection, 0)
        if threshold is not None:
            return fixed_threshold(threshold, size, "request")
        return fixed_threshold(self.threshold, size, "fixed")

    def identify(
        self,
        collection: str,
        data: bytes,
        *,
        top_k: int,
        threshold: float | None,
        target_fpir: float | None = None,
    ) -> tuple[list[IdentifiedFace], OpenSetThreshold]:
        """Every face in the photo with its best candidates; a subject matches at most one
        face. The threshold is chosen before inference, for the collection as it is now."""
        applied = self.identification_threshold(
            collection, threshold=threshold, target_fpir=target_fpir
        )
        faces = self.embed(data)
        if not faces:
            return [], applied
        queries = np.stack([analysed.face.embedding for analysed in faces])
        candidates = self.gallery.search(collection, queries, top_k)
        matches = assign_subjects(candidates, applied.threshold)
        report = (
            self.lookalikes.for_flags(collection)
            if self.lookalikes is not None and any(match is not None for match in matches)
            else None
        )
        identified = [
            IdentifiedFace(
                face=analysed.face,
                quality=analysed.quality,
                candidates=hits,
                match=match,
                lookalikes=(
                    report.partners(match.subject, applied.threshold)
                    if report is not None and match is not None
                    else []
                ),
            )
            for analysed, hits, match in zip(faces, candidates, matches, strict=True)
        ]
        return identified, applied

    def _largest_face(self, data: bytes, field: str) -> EmbeddedFace:
        """The largest face of the photo sent as ``field``; errors name that field."""
        try:
            _, (face,) = self.faces(data, largest_face)
        except NoFaceDetected:
            raise NoFaceDetected(f"no face found in {field}", field=field) from None
        except FaceRecError as error:
            raise _naming_field(error, field) from None
        return face

    def verify_images(self, data_a: bytes, data_b: bytes, threshold: float | None) -> Verification:
        """Similarity of the largest face of each photo."""
        limit = self.threshold if threshold is None else threshold
        self.check_request_pixels([data_a, data_b])
        first, second = self._largest_face(data_a, "image_a"), self._largest_face(data_b, "image_b")
        similarity = float(np.dot(first.embedding, second.embedding))
        return Verification(similarity=similarity, threshold=limit, match=similarity >= limit)

    def verify_subject(
        self, collection: str, data: bytes, subject: str, threshold: float | None
    ) -> Verification:
        """Similarity of the photo's largest face to the subject's closest enrolled face."""
        limit = self.threshold if threshold is None else threshold
        self.gallery.get_subject(collection, subject)  # 404 before spending inference
        face = self._largest_face(data, "image")
        hit = self.gallery.best_match_for_subject(collection, subject, face.embedding)
        return Verification(
            similarity=hit.similarity, threshold=limit, match=hit.similarity >= limit
        )


def _naming_field(error: FaceRecError, field: str) -> FaceRecError:
    """The same error, its message prefixed with the request field it concerns."""
    return type(error)(f"{field}: {error.message}", **{**error.details, "field": field})
