"""Identity over time: similarity-weighted votes of a track's recent recognitions.

A single frame's best match flickers (motion blur, a turned head, a blink). A
track's name is therefore decided over its last ``window`` recognitions:

- each recognition is an ``Observation``: the matched subject, or ``None``
  (unknown) when no subject reached the threshold, with the similarity;
- a subject's weight is the sum of its similarities; an unknown observation
  weighs ``threshold`` (it counts like a borderline match, whatever its own
  similarity, so a clear match outweighs a doubtful unknown);
- an outcome (a subject, or unknown) can win only with at least ``min_votes``
  observations in the window, or, for a subject, one observation at or above
  ``instant_similarity`` (a match so clear that waiting for a second frame would
  only keep the name off the face longer); among those, the heaviest wins;
- when no outcome qualifies, the previous decision stands (hysteresis): one odd
  frame never renames a track, and a new name needs ``min_votes`` agreeing frames.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Observation:
    subject: str | None  # None: nobody at or above the threshold
    similarity: float  # of the best candidate (of ``subject`` when there is one)


@dataclass(frozen=True, slots=True)
class Decision:
    subject: str | None  # None: decided unknown
    similarity: float  # mean similarity of the winning observations in the window
    votes: int
    weight: float


class IdentityVotes:
    """The vote of one track. Not thread-safe: one stream session owns it."""

    def __init__(
        self,
        *,
        threshold: float,
        window: int = 5,
        min_votes: int = 2,
        instant_similarity: float | None = None,
    ) -> None:
        if window < 1 or not 1 <= min_votes <= window:
            raise ValueError(f"need 1 <= min_votes <= window, got {min_votes} and {window}")
        self.threshold = threshold
        self.min_votes = min_votes
        self.instant_similarity = instant_similarity
        self._window: deque[Observation] = deque(maxlen=window)
        self._decision: Decision | None = None
        self._settled = False

    @property
    def decision(self) -> Decision | None:
        """The current decision; None while undecided (too few agreeing observations)."""
        return self._decision

    @property
    def observations(self) -> int:
        return len(self._window)

    @property
    def settled(self) -> bool:
        """True when the observations in the window decide by themselves (not hysteresis)."""
        return self._settled

    @property
    def latest(self) -> Observation | None:
        return self._window[-1] if self._window else None

    def add(self, observation: Observation) -> Decision | None:
        self._window.append(observation)
        winner = decide(
            list(self._window),
            threshold=self.threshold,
            min_votes=self.min_votes,
            instant_similarity=self.instant_similarity,
        )
        self._settled = winner is not None
        if winner is not None:
            self._decision = winner
        elif self._decision is not None:
            self._decision = self._refreshed(self._decision)
        return self._decision

    def forget_observations(self) -> None:
        """Start a fresh window (the gallery changed) but keep showing the current decision."""
        self._window.clear()
        self._settled = False

    def _refreshed(self, decision: Decision) -> Decision:
        """The standing decision with its figures recomputed over the current window."""
        same = [o for o in self._window if o.subject == decision.subject]
        if not same:
            return decision
        return _tally(decision.subject, same, self.threshold)


def _weight(observation: Observation, threshold: float) -> float:
    return threshold if observation.subject is None else observation.similarity


def _tally(subject: str | None, observations: list[Observation], threshold: float) -> Decision:
    return Decision(
        subject=subject,
        similarity=sum(o.similarity for o in observations) / len(observations),
        votes=len(observations),
        weight=sum(_weight(o, threshold) for o in observations),
    )


def decide(
    observations: list[Observation],
    *,
    threshold: float,
    min_votes: int,
    instant_similarity: float | None = None,
) -> Decision | None:
    """The heaviest outcome with at least ``min_votes`` observations (or a subject's one
    observation at ``instant_similarity``), or None."""
    by_outcome: dict[str | None, list[Observation]] = {}
    for observation in observations:
        by_outcome.setdefault(observation.subject, []).append(observation)
    qualified = [
        _tally(subject, group, threshold)
        for subject, group in by_outcome.items()
        if len(group) >= min_votes
        or (
            subject is not None
            and instant_similarity is not None
            and any(o.similarity >= instant_similarity for o in group)
        )
    ]
    if not qualified:
        return None
    # Ties: more votes, then a named subject over unknown, then the name (deterministic).
    return max(
        qualified,
        key=lambda d: (d.weight, d.votes, d.subject is not None, d.subject or ""),
    )
