"""Unknown faces of live streams: stable ids, their best crops, and enrollment from them.

A track decided unknown (nobody in the gallery matches) gets an ``unknown_id``
that stays with that person in that stream: while the track lasts, and when the
same person comes back (a new track whose embeddings match one of the stream's
unknowns at the recognizer's threshold) within ``ttl_s`` of being last seen. A
client can then count visitors, or enroll "this unknown" with
``POST /enroll`` (``unknown_id`` instead of images).

``UnknownStore`` is the process-wide, thread-safe and bounded memory of them:
at most ``capacity`` unknowns (the least recently seen is forgotten first, an
expired one before any), each with its ``crops_per_face`` best crops by quality
(112x112 aligned RGB crop, embedding, detection, hash of the frame it came from).
That bounds memory to about capacity x crops_per_face x 38 kB. Ids are 96 random
bits, and an unknown can be used only with its stream's collection and by the key
that opened the stream; any other lookup reads as "not found", never as
"someone else's".
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from app.core.service import (
    EnrollmentFace,
    EnrollResult,
    FaceService,
    Rejection,
    select_enrollment_face,
)
from app.core.types import Detection, EmbeddedFace, FloatArray, ImageArray
from app.errors import FaceRecError, UnknownNotFound

UNKNOWN_ID_PREFIX = "unk_"
_ID_BYTES = 12


@dataclass(frozen=True, slots=True)
class UnknownCrop:
    """One view of an unknown face, as recognised in a stream frame."""

    aligned: ImageArray = field(repr=False)  # (112, 112, 3) uint8 RGB
    embedding: FloatArray = field(repr=False)  # (D,), unit norm
    detection: Detection
    quality: float
    frame_sha256: str  # of the frame's bytes as received


@dataclass(slots=True)
class UnknownFace:
    unknown_id: str
    collection: str
    owner: str | None  # key id of the stream's key; None with auth off
    stream_id: str
    last_seen: float
    crops: list[UnknownCrop]


def new_unknown_id() -> str:
    return UNKNOWN_ID_PREFIX + secrets.token_urlsafe(_ID_BYTES)


def _best(crops: Sequence[UnknownCrop], limit: int) -> list[UnknownCrop]:
    """The ``limit`` best crops by quality, one per frame."""
    by_frame: dict[str, UnknownCrop] = {}
    for crop in crops:
        kept = by_frame.get(crop.frame_sha256)
        if kept is None or crop.quality > kept.quality:
            by_frame[crop.frame_sha256] = crop
    return sorted(by_frame.values(), key=lambda crop: crop.quality, reverse=True)[:limit]


def _similarity(first: Sequence[UnknownCrop], second: Sequence[UnknownCrop]) -> float:
    if not first or not second:
        return -1.0
    a = np.stack([crop.embedding for crop in first])
    b = np.stack([crop.embedding for crop in second])
    return float((a @ b.T).max())


class UnknownStore:
    def __init__(
        self,
        *,
        capacity: int,
        crops_per_face: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or crops_per_face < 1 or ttl_s <= 0:
            raise ValueError(
                "need capacity >= 1, crops_per_face >= 1 and ttl_s > 0, got "
                f"{capacity}, {crops_per_face}, {ttl_s}"
            )
        self.capacity = capacity
        self.crops_per_face = crops_per_face
        self.ttl_s = ttl_s
        self._clock = clock
        self._faces: dict[str, UnknownFace] = {}  # insertion order = least recently seen first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._faces)

    def remember(
        self,
        *,
        stream_id: str,
        collection: str,
        owner: str | None,
        crops: Sequence[UnknownCrop],
        threshold: float,
        unknown_id: str | None = None,
    ) -> str:
        """Add crops of an unknown face seen in a stream; returns its unknown id.

        With ``unknown_id`` (the track already has one) the crops join that unknown,
        which is re-created under the same id if it was forgotten meanwhile. Without,
        the face takes the id of the stream's best-matching unknown at ``threshold``
        (the same person back), or a new one.
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            face = self._faces.get(unknown_id) if unknown_id else None
            if face is None and unknown_id is None:
                face = self._match(stream_id, collection, owner, crops, threshold)
            if face is None:
                face = UnknownFace(
                    unknown_id=unknown_id or new_unknown_id(),
                    collection=collection,
                    owner=owner,
                    stream_id=stream_id,
                    last_seen=now,
                    crops=[],
                )
            face.crops = _best([*face.crops, *crops], self.crops_per_face)
            self._seen(face, now)
            return face.unknown_id

    def touch(self, unknown_ids: Sequence[str]) -> None:
        """These unknowns are in view now (their time window restarts)."""
        now = self._clock()
        with self._lock:
            for unknown_id in unknown_ids:
                face = self._faces.get(unknown_id)
                if face is not None:
                    self._seen(face, now)

    def lookup(self, unknown_id: str, *, collection: str, owner: str | None) -> UnknownFace:
        """A copy of the unknown, if it belongs to this collection and key."""
        with self._lock:
            self._expire(self._clock())
            face = self._faces.get(unknown_id)
            if face is None or face.collection != collection or face.owner != owner:
                raise UnknownNotFound(
                    "no unknown face with this id in this collection for this key; unknown "
                    f"ids are kept {self.ttl_s:.0f} s after the face was last seen",
                    unknown_id=unknown_id,
                )
            return replace(face, crops=list(face.crops))

    def _match(
        self,
        stream_id: str,
        collection: str,
        owner: str | None,
        crops: Sequence[UnknownCrop],
        threshold: float,
    ) -> UnknownFace | None:
        scored = [
            (_similarity(face.crops, crops), face)
            for face in self._faces.values()
            if face.stream_id == stream_id and face.collection == collection and face.owner == owner
        ]
        best = max(scored, key=lambda pair: pair[0], default=None)
        return best[1] if best is not None and best[0] >= threshold else None

    def _seen(self, face: UnknownFace, now: float) -> None:
        face.last_seen = now
        self._faces.pop(face.unknown_id, None)
        self._faces[face.unknown_id] = face  # most recently seen last
        while len(self._faces) > self.capacity:
            self._faces.pop(next(iter(self._faces)))

    def _expire(self, now: float) -> None:
        while self._faces:
            oldest = next(iter(self._faces.values()))
            if now - oldest.last_seen <= self.ttl_s:
                return
            del self._faces[oldest.unknown_id]


def enroll_unknown(
    service: FaceService,
    store: UnknownStore,
    *,
    collection: str,
    subject: str,
    unknown_id: str,
    owner: str | None,
    strict: bool = False,
) -> EnrollResult:
    """Enroll an unknown's kept crops as ``subject``, through the photo enrollment gates.

    Each crop is one "image" (named ``unknown_id#n``); crops that fail the gates are
    rejected with the same codes as photos, and when none passes the first crop's
    error is raised. Enrolling the same unknown twice is idempotent (a crop is keyed
    by the hash of its frame). Blocking (SQLite commit).
    """
    face = store.lookup(unknown_id, collection=collection, owner=owner)
    if not face.crops:
        raise UnknownNotFound("this unknown face has no crops kept", unknown_id=unknown_id)
    outcomes: list[EnrollmentFace | Rejection] = []
    for number, crop in enumerate(face.crops, start=1):
        name = f"{unknown_id}#{number}"
        try:
            select_enrollment_face([crop.detection], "single", service.gate)
            embedded = EmbeddedFace(
                detection=crop.detection, embedding=crop.embedding, aligned=crop.aligned
            )
            outcomes.append(service.gated_face(name, crop.frame_sha256, embedded))
        except FaceRecError as error:
            outcomes.append(Rejection(image=name, error=error))
    return service.commit_enrollment(collection, subject, outcomes, strict=strict)
