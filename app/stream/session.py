"""One stream's frames: decode, detect, track, catch identity changes, label; recognise.

``StreamEngine`` holds what every stream shares (models, gallery, rules, the
unknowns' store) and is built once per process; ``StreamSession`` is one
connection's state (tracks and their identities). Per frame,
``StreamSession.process``:

1. decodes, detects and tracks;
2. folds in the recognitions finished since the previous frame;
3. runs the appearance signal on every tracked face (``appearance.view_face``,
   a fraction of a millisecond each). A face whose view no longer looks like its
   track's last frames is *suspect*: it is embedded right away, on this frame,
   and compared with the track's recent embeddings. Somebody else: the track is
   split (a new track id, no votes, no name) and the embedding's gallery match is
   the new track's first vote; the same person: the track and its name stay, and
   the match is one more vote. Either way the answer for this frame never shows
   the previous person's name on someone else;
4. labels the faces with their voted names (or stable unknown ids) and picks the
   track(s) due for recognition (``reid``) as a ``RecognitionJob``.

``StreamSession.recognise`` runs a job (embedding and gallery search, the
expensive part) into a ``RecognitionOutcome`` without touching the session's
state, so it can run while later frames are processed. Both are blocking:
callers run them in worker threads, ``process`` one frame at a time per session.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app.core.gallery import Gallery
from app.core.matching import assign_subjects
from app.core.types import DecodedImage, Detection, EmbeddedFace, FloatArray, ImageArray
from app.stream.appearance import SPLIT_SIMILARITY, FaceView, view_face
from app.stream.labels import StreamFace, label_faces
from app.stream.quality import crop_quality
from app.stream.reid import ReidPolicy, TrackIdentity, select_for_recognition
from app.stream.tracker import DEFAULT_MIN_IOU, TrackedFace, Tracker
from app.stream.unknowns import UnknownCrop, UnknownStore
from app.stream.voting import IdentityVotes, Observation

# Candidates per recognised face: enough for ``assign_subjects`` to fall back to a
# face's second-best subject when two faces of one frame look like the same person.
CANDIDATES_PER_FACE = 3

__all__ = ["StreamFace", "StreamSession"]


@dataclass(frozen=True, slots=True)
class VoteRule:
    window: int = 5
    min_votes: int = 2
    instant_similarity: float | None = None  # one match this close decides at once


@dataclass(frozen=True, slots=True)
class TrackRule:
    min_iou: float = DEFAULT_MIN_IOU
    max_missed: int = 5


@dataclass(frozen=True, slots=True)
class RecognitionJob:
    """Tracked faces of one frame to recognise, with what is needed to fold the result."""

    image: ImageArray
    tracked: tuple[TrackedFace, ...]
    tick: int  # the session's processed-frame tick of ``image``
    gallery_epoch: int  # results against an older gallery are dropped
    frame_sha256: str = ""
    qualities: tuple[float, ...] = ()  # one per ``tracked``
    signatures: tuple[FloatArray, ...] = ()  # one per ``tracked``


@dataclass(frozen=True, slots=True)
class Recognition:
    observation: Observation
    face: EmbeddedFace


@dataclass(frozen=True, slots=True)
class RecognitionOutcome:
    job: RecognitionJob
    recognitions: tuple[Recognition, ...]  # one per ``job.tracked``

    @property
    def observations(self) -> tuple[Observation, ...]:
        return tuple(recognition.observation for recognition in self.recognitions)


@dataclass(frozen=True, slots=True)
class FrameResult:
    width: int
    height: int
    faces: list[StreamFace]
    recognised: list[int]  # tracks whose recognition was folded in for this frame
    job: RecognitionJob | None  # recognition due now; None when none is due or allowed
    checked: int = 0  # suspect faces embedded on this frame (the appearance signal fired)
    split: list[int] = field(default_factory=list)  # new track ids: somebody else came


@dataclass(frozen=True, slots=True)
class StreamEngine:
    """The per-process collaborators of every stream session."""

    decode: Callable[[bytes], DecodedImage]
    detect: Callable[[ImageArray], list[Detection]]
    embed: Callable[[ImageArray, list[Detection]], list[EmbeddedFace]]
    gallery: Gallery
    threshold: float  # the fixed one; ``threshold_for`` when given decides per collection
    policy: ReidPolicy = field(default_factory=ReidPolicy)
    votes: VoteRule = field(default_factory=VoteRule)
    tracking: TrackRule = field(default_factory=TrackRule)
    unknowns: UnknownStore | None = None  # None: unknown faces get no ids
    split_similarity: float = SPLIT_SIMILARITY
    # The collection's identification threshold now (the calibrated one /identify applies).
    threshold_for: Callable[[str], float] | None = None

    def collection_threshold(self, collection: str) -> float:
        return self.threshold if self.threshold_for is None else self.threshold_for(collection)

    def open_session(self, collection: str, owner: str | None = None) -> StreamSession:
        return StreamSession(self, collection, owner)


@dataclass(slots=True)
class StreamSession:
    engine: StreamEngine
    collection: str
    owner: str | None = None  # key id of the stream's key (scopes its unknown faces)
    stream_id: str = field(default_factory=lambda: secrets.token_hex(8))
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
        decoded = self.engine.decode(data)
        image = decoded.pixels
        update = self.tracker.update(self.engine.detect(image), frame_index)
        for track_id in update.ended:
            self.identities.pop(track_id, None)
        self.tick += 1
        self._notice_gallery_changes()
        recognised = [track_id for outcome in finished for track_id in self._fold(outcome)]
        tracked = list(update.faces)
        views = [view_face(image, face.detection.landmarks) for face in tracked]
        qualities = tuple(
            crop_quality(face.detection, view.sharpness)
            for face, view in zip(tracked, views, strict=True)
        )
        suspects = self._suspects(tracked, views)
        split: list[int] = []
        if suspects:
            split = self._check(decoded, tracked, suspects, views, qualities)
            recognised += [tracked[index].track_id for index in suspects]
        identities = [self._identity(face.track_id) for face in tracked]
        for identity, view, quality in zip(identities, views, qualities, strict=True):
            identity.observe(view, quality)
        self._touch_unknowns(identities)
        chosen = select_for_recognition(identities, self.tick, self.engine.policy)
        job = None
        if chosen and may_recognise:
            job = RecognitionJob(
                image,
                tuple(tracked[index] for index in chosen),
                self.tick,
                self.gallery_epoch,
                decoded.sha256,
                tuple(qualities[index] for index in chosen),
                tuple(views[index].signature for index in chosen),
            )
        return FrameResult(
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            faces=label_faces(tracked, identities, qualities),
            recognised=recognised,
            job=job,
            checked=len(suspects),
            split=split,
        )

    def recognise(self, job: RecognitionJob) -> RecognitionOutcome:
        """Embed and search the job's faces; reads the session's engine only, never its state."""
        embedded = self.engine.embed(job.image, [face.detection for face in job.tracked])
        queries = np.stack([face.embedding for face in embedded])
        candidates = self.engine.gallery.search(self.collection, queries, CANDIDATES_PER_FACE)
        matches = assign_subjects(candidates, self.engine.collection_threshold(self.collection))
        recognitions = tuple(
            Recognition(
                Observation(match.subject, match.similarity)
                if match is not None
                else Observation(None, hits[0].similarity if hits else 0.0),
                face,
            )
            for hits, match, face in zip(candidates, matches, embedded, strict=True)
        )
        return RecognitionOutcome(job, recognitions)

    # --- identity changes ------------------------------------------------------------------

    def _suspects(self, tracked: Sequence[TrackedFace], views: Sequence[FaceView]) -> list[int]:
        """Faces of existing tracks whose view does not look like their recent ones."""
        suspects = []
        for index, (face, view) in enumerate(zip(tracked, views, strict=True)):
            identity = self.identities.get(face.track_id)
            if face.is_new or identity is None:
                continue
            similarity = identity.view_similarity(view)
            if similarity is not None and similarity < self.engine.split_similarity:
                suspects.append(index)
        return suspects

    def _check(
        self,
        decoded: DecodedImage,
        tracked: list[TrackedFace],
        suspects: Sequence[int],
        views: Sequence[FaceView],
        qualities: Sequence[float],
    ) -> list[int]:
        """Embed the suspects now; split the tracks of those who are somebody else and
        fold each embedding's match into its (new or same) track. Returns the new ids."""
        job = RecognitionJob(
            decoded.pixels,
            tuple(tracked[index] for index in suspects),
            self.tick,
            self.gallery_epoch,
            decoded.sha256,
            tuple(qualities[index] for index in suspects),
            tuple(views[index].signature for index in suspects),
        )
        outcome = self.recognise(job)
        split = []
        for position, index in enumerate(suspects):
            face = tracked[index]
            recognition = outcome.recognitions[position]
            if self.identities[face.track_id].same_person(recognition.face.embedding) is not True:
                new_id = self.tracker.split(face.track_id)
                del self.identities[face.track_id]
                tracked[index] = face = TrackedFace(new_id, face.detection, is_new=True)
                self._identity(new_id)
                split.append(new_id)
            self._fold_one(face.track_id, recognition, job, position)
        return split

    # --- recognitions ------------------------------------------------------------------------

    def _fold(self, outcome: RecognitionOutcome) -> list[int]:
        """Add an outcome's observations to its tracks' votes; the track ids folded."""
        if outcome.job.gallery_epoch != self.gallery_epoch:
            return []  # searched an older gallery: its tracks are due again anyway
        return [
            face.track_id
            for position, (face, recognition) in enumerate(
                zip(outcome.job.tracked, outcome.recognitions, strict=True)
            )
            if self._fold_one(face.track_id, recognition, outcome.job, position)
        ]

    def _fold_one(
        self, track_id: int, recognition: Recognition, job: RecognitionJob, position: int
    ) -> bool:
        identity = self.identities.get(track_id)
        if identity is None:
            return False  # the track ended (or was split) while it was being recognised
        quality = job.qualities[position] if job.qualities else 0.0
        signature = job.signatures[position] if job.signatures else None
        identity.votes.add(recognition.observation)
        identity.recognised(job.tick, quality, signature)
        identity.embeddings.append(recognition.face.embedding)
        if recognition.observation.subject is None:
            identity.unknown_crops.append(
                UnknownCrop(
                    aligned=recognition.face.aligned,
                    embedding=recognition.face.embedding,
                    detection=recognition.face.detection,
                    quality=quality,
                    frame_sha256=job.frame_sha256,
                )
            )
        self._remember_unknown(identity)
        return True

    def _remember_unknown(self, identity: TrackIdentity) -> None:
        """A track decided unknown gets (or keeps) an unknown id, with its best crops."""
        store = self.engine.unknowns
        decision = identity.votes.decision
        if store is None or decision is None or decision.subject is not None:
            return
        if identity.unknown_id is not None and not identity.unknown_crops:
            return
        identity.unknown_id = store.remember(
            stream_id=self.stream_id,
            collection=self.collection,
            owner=self.owner,
            crops=identity.unknown_crops,
            threshold=self.engine.collection_threshold(self.collection),
            unknown_id=identity.unknown_id,
        )
        identity.unknown_crops = []

    def _touch_unknowns(self, identities: Sequence[TrackIdentity]) -> None:
        seen = [identity.unknown_id for identity in identities if identity.unknown_id]
        if seen and self.engine.unknowns is not None:
            self.engine.unknowns.touch(seen)

    def _identity(self, track_id: int) -> TrackIdentity:
        identity = self.identities.get(track_id)
        if identity is None:
            rule = self.engine.votes
            threshold = self.engine.collection_threshold(self.collection)
            # The instant margin is set above the fixed threshold: it keeps that margin.
            shift = threshold - self.engine.threshold
            identity = TrackIdentity(
                IdentityVotes(
                    threshold=threshold,
                    window=rule.window,
                    min_votes=rule.min_votes,
                    instant_similarity=(
                        None if rule.instant_similarity is None else rule.instant_similarity + shift
                    ),
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
