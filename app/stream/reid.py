"""Which tracks to recognise in this frame: the source of real-time speed.

Detection runs on every processed frame; the recognizer (most of the cost per
face) runs only on the tracks that need it, most urgent first, at most
``max_per_frame`` of them so that no frame's latency spikes:

1. undecided tracks (new faces, or faces whose votes do not agree yet), fewest
   observations first;
2. tracks marked stale (the gallery changed) and tracks whose face quality grew
   by ``quality_gain`` since their last recognition (a face turning to the camera
   or coming closer);
3. tracks whose last recognition is ``interval`` processed frames old, oldest first.

``interval=1, max_per_frame=0`` recognises every face in every frame (the
benchmark's baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.core.types import Detection
from app.stream.voting import IdentityVotes

# Faces larger than the recognizer's 112x112 input carry no extra detail for it.
ALIGNED_SIDE = 112.0


@dataclass(frozen=True, slots=True)
class ReidPolicy:
    interval: int = 10  # processed frames between re-identifications of a decided track
    max_per_frame: int = 1  # recognitions per frame; 0 = no cap
    quality_gain: float = 1.25  # re-identify early when quality grew by this factor

    def __post_init__(self) -> None:
        if self.interval < 1 or self.max_per_frame < 0 or self.quality_gain < 1:
            raise ValueError(
                "need interval >= 1, max_per_frame >= 0 and quality_gain >= 1, got "
                f"{self.interval}, {self.max_per_frame}, {self.quality_gain}"
            )


@dataclass(slots=True)
class TrackIdentity:
    """Recognition state of one track (mutable, owned by one stream session)."""

    votes: IdentityVotes
    last_recognised: int | None = None  # the session's processed-frame tick
    recognised_quality: float = 0.0
    stale: bool = False

    def mark_stale(self) -> None:
        self.stale = True
        self.votes.forget_observations()

    def recognised(self, tick: int, quality: float) -> None:
        self.last_recognised = tick
        self.recognised_quality = quality
        self.stale = False


def face_quality(detection: Detection) -> float:
    """Detector confidence times the face's shorter side, capped at the crop size."""
    side = min(detection.width, detection.height, ALIGNED_SIDE)
    return detection.score * max(side, 0.0)


def _urgency(
    identity: TrackIdentity, detection: Detection, tick: int, policy: ReidPolicy
) -> tuple[int, float] | None:
    """Sort key (smaller is more urgent), or None when the track need not be recognised."""
    if identity.votes.decision is None or identity.last_recognised is None:
        return (0, float(identity.votes.observations) - face_quality(detection) / 1e6)
    if identity.stale or face_quality(detection) >= (
        identity.recognised_quality * policy.quality_gain
    ):
        return (1, float(identity.last_recognised))
    if tick - identity.last_recognised >= policy.interval:
        return (2, float(identity.last_recognised))
    return None


def select_for_recognition(
    faces: Sequence[tuple[TrackIdentity, Detection]], tick: int, policy: ReidPolicy
) -> list[int]:
    """Indices into ``faces`` to recognise now, most urgent first."""
    urgent = [
        (key, index)
        for index, (identity, detection) in enumerate(faces)
        if (key := _urgency(identity, detection, tick, policy)) is not None
    ]
    urgent.sort()
    chosen = [index for _, index in urgent]
    return chosen[: policy.max_per_frame] if policy.max_per_frame else chosen
