"""What a stream answer says about each visible face: its track's voted name or unknown id.

A name shown on two tracks of one frame stays on the heavier decision (one person is
in a frame once); the other track shows no name until its own votes say otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.stream.reid import TrackIdentity
from app.stream.tracker import TrackedFace


@dataclass(frozen=True, slots=True)
class StreamFace:
    track_id: int
    bbox: tuple[float, float, float, float]
    det_score: float
    quality: float  # ``quality.crop_quality`` of this frame's crop
    subject: str | None  # None: unknown, or not decided yet
    similarity: float | None  # None: not recognised yet
    unknown_id: str | None  # set while the track is decided unknown


def label_faces(
    tracked: Sequence[TrackedFace],
    identities: Sequence[TrackIdentity],
    qualities: Sequence[float],
) -> list[StreamFace]:
    decisions = [identity.votes.decision for identity in identities]
    holder: dict[str, int] = {}
    for index, decision in enumerate(decisions):
        if decision is None or decision.subject is None:
            continue
        other = holder.get(decision.subject)
        other_decision = decisions[other] if other is not None else None
        if other_decision is None or decision.weight > other_decision.weight:
            holder[decision.subject] = index
    faces: list[StreamFace] = []
    for index, (face, identity, decision) in enumerate(
        zip(tracked, identities, decisions, strict=True)
    ):
        subject = decision.subject if decision is not None else None
        shown = subject if subject is not None and holder.get(subject) == index else None
        unknown = decision is not None and decision.subject is None
        faces.append(
            StreamFace(
                track_id=face.track_id,
                bbox=face.detection.bbox,
                det_score=face.detection.score,
                quality=qualities[index],
                subject=shown,
                similarity=decision.similarity if decision is not None else None,
                unknown_id=identity.unknown_id if unknown else None,
            )
        )
    return faces
