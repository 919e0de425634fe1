"""One stream's frames: decode, detect, track, label; recognition off the answer path.

``StreamEngine`` holds what every stream shares (models, gallery, rules) and is
built once per process; ``StreamSession`` is one connection's state (tracks and
their votes). Per frame, ``StreamSession.process`` decodes, detects and tracks,
folds in the recognitions finished since the previous frame, labels the faces
with their voted names and picks the track(s) due for recognition as a
``RecognitionJob``; ``StreamSession.recognise`` runs a job (embedding and
gallery search, the expensive part) into a ``RecognitionOutcome`` without
touching the session's state, so it can run while later frames are processed.
Both are blocking: callers run them in worker threads, ``process`` one frame at a
time per session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app.core.gallery import Gallery
from app.core.matching import assign_subjects
from app.core.types import DecodedImage, Detection, EmbeddedFace, ImageArray
from app.stream.reid import ReidPolicy, TrackIdentity, face_quality, select_for_recognition
from app.stream.tracker import DEFAULT_MIN_IOU, TrackedFace, Tracker
from app.stream.voting import IdentityVotes, Observation

# Candidates per recognised face: enough for ``assign_subjects`` to fall back to a
# face's second-best subject when two faces of one frame look like the same person.
CANDIDATES_PER_FACE = 3


@dataclass(frozen=True, slots=True)
class VoteRule:
    window: int = 5
    min_votes: int = 2


@dataclass(frozen=True, slots=True)
class TrackRule:
    min_iou: float = DEFAULT_MIN_IOU
    max_missed: int = 5


@dataclass(frozen=True, slots=True)
class StreamFace:
    track_id: int
    bbox: tuple[float, float, float, float]
    det_score: float
    subject: str | None  # None: unknown, or not decided yet
    similarity: float | None  # None: not recognised yet


@dataclass(frozen=True, slots=True)
class RecognitionJob:
    """Tracked faces of one frame to recognise, with what is needed to fold the result."""

    image: ImageArray
    tracked: tuple[TrackedFace, ...]
    tick: int  # the session's processed-frame tick of ``image``
    gallery_epoch: int  # results against an older gallery are dropped


@dataclass(frozen=True, slots=True)
class RecognitionOutcome:
    job: RecognitionJob
    observations: tuple[Observation, ...]  # one per ``job.tracked``


@dataclass(frozen=True, slots=True)
class FrameResult:
    width: int
    height: int
    faces: list[StreamFace]
    recognised: list[int]  # tracks whose recognition was folded in for this frame
    job: RecognitionJob | None  # recognition due now; None when none is due or allowed


@dataclass(frozen=True, slots=True)
class StreamEngine:
    """The per-process collaborators of every stream session."""

    decode: Callable[[bytes], DecodedImage]
    detect: Callable[[ImageArray], list[Detection]]
    embed: Callable[[ImageArray, list[Detection]], list[EmbeddedFace]]
    gallery: Gallery
    threshold: float
    policy: ReidPolicy = field(default_factory=ReidPolicy)
    votes: VoteRule = field(default_factory=VoteRule)
    tracking: TrackRule = field(default_factory=TrackRule)

    def open_session(self, collection: str) -> StreamSession:
        return StreamSession(self, collection)


@dataclass(slots=True)
class StreamSession:
    engine: StreamEngine
    collection: str
    tracker: Tracker = field(init=False)
    identities: dict[int, TrackIdentity] = field(init=False, default_factory=dict)
    tick: int = field(init=False, default=0)
    gallery_faces: int | None = field(init=False, default=None)
    gallery_epoch: int = field(init=False, default=0)  # changes noticed so far

    def __post_init__(self) -> None:
        rule = self.engine.tracking
        self.tracker = Tracker(min_iou=rule.min_iou, max_missed=rule.max_missed)

    def process(
        self,
        data: bytes,
        frame_index: int,
        finished: Sequence[RecognitionOutcome] = (),
        *,
        may_recognise: bool = True,
    ) -> FrameResult:
        """One frame (encoded image bytes) with the client's index for it; increasing.

        ``finished``: recognitions completed since the previous frame, folded into
        their tracks' votes (dropped when the track ended or the gallery changed
        since). ``may_recognise=False`` (a recognition is still in flight) picks no job.
        """
        image = self.engine.decode(data).pixels
        update = self.tracker.update(self.engine.detect(image), frame_index)
        for track_id in update.ended:
            self.identities.pop(track_id, None)
        self.tick += 1
        self._notice_gallery_changes()
        recognised = [track_id for outcome in finished for track_id in self._fold(outcome)]
        faces = [(self._identity(face.track_id), face.detection) for face in update.faces]
        chosen = select_for_recognition(faces, self.tick, self.engine.policy)
        job = None
        if chosen and may_recognise:
            tracked = tuple(update.faces[index] for index in chosen)
            job = RecognitionJob(image, tracked, self.tick, self.gallery_epoch)
        return FrameResult(
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            faces=self._label(update.faces),
            recognised=recognised,
            job=job,
        )

    def recognise(self, job: RecognitionJob) -> RecognitionOutcome:
        """Embed and search the job's faces; reads the session's engine only, never its state."""
        embedded = self.engine.embed(job.image, [face.detection for face in job.tracked])
        queries = np.stack([face.embedding for face in embedded])
        candidates = self.engine.gallery.search(self.collection, queries, CANDIDATES_PER_FACE)
        matches = assign_subjects(candidates, self.engine.threshold)
        observations = tuple(
            Observation(match.subject, match.similarity)
            if match is not None
            else Observation(None, hits[0].similarity if hits else 0.0)
            for hits, match in zip(candidates, matches, strict=True)
        )
        return RecognitionOutcome(job, observations)

    def _identity(self, track_id: int) -> TrackIdentity:
        identity = self.identities.get(track_id)
        if identity is None:
            rule = self.engine.votes
            identity = TrackIdentity(
                IdentityVotes(
                    threshold=self.engine.threshold, window=rule.window, min_votes=rule.min_votes
                )
            )
            self.identities[track_id] = identity
        return identity

    def _notice_gallery_changes(self) -> None:
        """An enrollment or deletion in this collection makes every track due for re-id."""
        faces = self.engine.gallery.stats().get(self.collection, 0)
        if self.gallery_faces is not None and faces != self.gallery_faces:
            for identity in self.identities.values():
                identity.mark_stale()
            self.gallery_epoch += 1
        self.gallery_faces = faces

    def _fold(self, outcome: RecognitionOutcome) -> list[int]:
        """Add an outcome's observations to its tracks' votes; the track ids folded."""
        if outcome.job.gallery_epoch != self.gallery_epoch:
            return []  # searched an older gallery: its tracks are due again anyway
        folded = []
        for face, observation in zip(outcome.job.tracked, outcome.observations, strict=True):
            identity = self.identities.get(face.track_id)
            if identity is None:
                continue  # the track ended while it was being recognised
            identity.votes.add(observation)
            identity.recognised(outcome.job.tick, face_quality(face.detection))
            folded.append(face.track_id)
        return folded

    def _label(self, tracked: Sequence[TrackedFace]) -> list[StreamFace]:
        """Each visible track's decision; a name shown on two tracks stays on the heavier."""
        decisions = [self.identities[face.track_id].votes.decision for face in tracked]
        holder: dict[str, int] = {}
        for index, decision in enumerate(decisions):
            if decision is None or decision.subject is None:
                continue
            other = holder.get(decision.subject)
            other_decision = decisions[other] if other is not None else None
            if other_decision is None or decision.weight > other_decision.weight:
                holder[decision.subject] = index
        faces: list[StreamFace] = []
        for index, (face, decision) in enumerate(zip(tracked, decisions, strict=True)):
            named = decision is not None and (
                decision.subject is None or holder.get(decision.subject) == index
            )
            faces.append(
                StreamFace(
                    track_id=face.track_id,
                    bbox=face.detection.bbox,
                    det_score=face.detection.score,
                    subject=decision.subject if named and decision is not None else None,
                    similarity=decision.similarity if decision is not None else None,
                )
            )
        return faces
