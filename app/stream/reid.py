"""Which tracks to recognise in this frame, and each track's recognition state.

Detection runs on every processed frame; the recognizer (most of the cost per
face) runs only on the tracks that need it, most urgent first, at most
``max_per_frame`` of them so that no frame's latency spikes, and only on crops
worth it (``quality.crop_quality`` at least ``min_quality``):

1. undecided tracks (new faces, or faces whose votes do not agree yet), fewest
   observations first, then the better crop;
2. tracks marked stale (the gallery changed; until new recognitions decide by
   themselves), tracks whose crop quality grew by
   ``quality_gain`` since their last recognition (a face turning to the camera or
   coming closer), and tracks whose view drifted from the one last recognised
   (appearance similarity below ``drift_similarity``);
3. tracks not confidently named (unknown, or a name whose mean similarity is
   under threshold + ``confident_margin``) whose last recognition is
   ``interval`` processed frames old, oldest first.

A confidently named track is not re-identified on a timer at all: only a better
view, a drifting view, a gallery change, or the appearance signal (which splits
the track, see ``session``) sends it back to the recognizer.

``interval=1, max_per_frame=0, min_quality=0`` and ``confident_margin`` above 2
recognise every face in every frame (the benchmark's baseline).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.core.types import FloatArray
from app.stream.appearance import FaceView, best_similarity
from app.stream.unknowns import UnknownCrop
from app.stream.voting import IdentityVotes

# Signatures of a track's last frames that a new view is compared with: the best of a
# few forgives one frame of landmark jitter.
RECENT_VIEWS = 3
# Embeddings of a track's last recognitions kept to confirm or refute a suspected change.
RECENT_EMBEDDINGS = 3


@dataclass(frozen=True, slots=True)
class ReidPolicy:
    interval: int = 10  # processed frames between re-identifications of a doubtful track
    max_per_frame: int = 1  # recognitions per frame; 0 = no cap
    quality_gain: float = 1.25  # re-identify early when quality grew by this factor
    confident_margin: float = 0.1  # above threshold + this, a name stops timed re-id
    min_quality: float = 0.05  # crops of lower quality are not recognised
    drift_similarity: float = 0.8  # view vs the one last recognised: below, re-identify

    def __post_init__(self) -> None:
        if self.interval < 1 or self.max_per_frame < 0 or self.quality_gain < 1:
            raise ValueError(
                "need interval >= 1, max_per_frame >= 0 and quality_gain >= 1, got "
                f"{self.interval}, {self.max_per_frame}, {self.quality_gain}"
            )
        if not 0 <= self.min_quality <= 1 or not -1 <= self.drift_similarity <= 1:
            raise ValueError(
                "need min_quality in [0, 1] and drift_similarity in [-1, 1], got "
                f"{self.min_quality}, {self.drift_similarity}"
            )


@dataclass(slots=True)
class TrackIdentity:
    """Recognition state of one track (mutable, owned by one stream session)."""

    votes: IdentityVotes
    last_recognised: int | None = None  # the session's processed-frame tick
    recognised_quality: float = 0.0
    recognised_signature: FloatArray | None = None
    stale: bool = False
    quality: float = 0.0  # of the track's crop in the current frame
    drift: float | None = None  # current view vs the view last recognised
    unknown_id: str | None = None
    recent_views: deque[FloatArray] = field(default_factory=lambda: deque(maxlen=RECENT_VIEWS))
    embeddings: deque[FloatArray] = field(default_factory=lambda: deque(maxlen=RECENT_EMBEDDINGS))
    unknown_crops: list[UnknownCrop] = field(default_factory=list)  # not yet remembered

    def mark_stale(self) -> None:
        self.stale = True
        self.votes.forget_observations()

    def view_similarity(self, view: FaceView) -> float | None:
        """Best similarity of a view to this track's recent ones (None: nothing seen yet)."""
        return best_similarity(view.signature, self.recent_views)

    def observe(self, view: FaceView, quality: float) -> None:
        """This frame's view of the track's face."""
        self.recent_views.append(view.signature)
        self.quality = quality
        self.drift = (
            None
            if self.recognised_signature is None
            else float(np.dot(view.signature, self.recognised_signature))
        )

    def recognised(self, tick: int, quality: float, signature: FloatArray | None) -> None:
        """A recognition of the track was added to its votes. A stale track stays due
        until observations made since the gallery changed decide by themselves."""
        self.last_recognised = tick
        self.recognised_quality = quality
        self.recognised_signature = signature
        self.stale = self.stale and not self.votes.settled

    def same_person(self, embedding: FloatArray) -> bool | None:
        """Whether ``embedding`` matches this track's recent recognitions (at the vote's
        threshold); None when the track was never recognised."""
        if not self.embeddings:
            return None
        best = max(float(np.dot(embedding, known)) for known in self.embeddings)
        return best >= self.votes.threshold

    def confidently_named(self, margin: float) -> bool:
        """Named well above the threshold, and the latest recognition agrees."""
        decision, latest = self.votes.decision, self.votes.latest
        return (
            decision is not None
            and decision.subject is not None
            and decision.similarity >= self.votes.threshold + margin
            and latest is not None
            and latest.subject == decision.subject
        )


def _urgency(identity: TrackIdentity, tick: int, policy: ReidPolicy) -> tuple[int, float] | None:
    """Sort key (smaller is more urgent), or None when the track need not be recognised."""
    if identity.quality < policy.min_quality:
        return None
    if identity.votes.decision is None or identity.last_recognised is None:
        return (0, float(identity.votes.observations) - identity.quality)
    if (
        identity.stale
        or identity.quality >= identity.recognised_quality * policy.quality_gain
        or (identity.drift is not None and identity.drift < policy.drift_similarity)
    ):
        return (1, float(identity.last_recognised))
    if identity.confidently_named(policy.confident_margin):
        return None
    if tick - identity.last_recognised >= policy.interval:
        return (2, float(identity.last_recognised))
    return None


def select_for_recognition(
    identities: Sequence[TrackIdentity], tick: int, policy: ReidPolicy
) -> list[int]:
    """Indices into ``identities`` to recognise now, most urgent first."""
    urgent = [
        (key, index)
        for index, identity in enumerate(identities)
        if identity.last_recognised != tick
        and (key := _urgency(identity, tick, policy)) is not None
    ]
    urgent.sort()
    chosen = [index for _, index in urgent]
    return chosen[: policy.max_per_frame] if policy.max_per_frame else chosen
