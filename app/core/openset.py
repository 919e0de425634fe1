"""Open-set identification thresholds: the similarity at which a probe of somebody who is
not enrolled is matched to anybody with probability ``target_fpir``, for a gallery of a
given size.

``/identify`` compares a probe with every enrolled face and matches the best one above
the threshold. A stranger is falsely identified when the highest of the N similarities
to the gallery's faces reaches the threshold. With the N impostor comparisons treated as
independent draws from the recognizer's impostor score distribution ``S``::

    FPIR(t) = P(max of N impostor scores >= t) = 1 - (1 - P(S >= t)) ** N

so holding a target FPIR needs the per-comparison false-accept rate

    far = 1 - (1 - FPIR) ** (1 / N)        (about FPIR / N)

and the threshold is the upper ``far`` quantile of ``S``: read from the measured impostor
tail (the recognizer manifest's ``impostor_tail``, log-linear between measured points)
where it was measured, and from its fitted exponential tail beyond the deepest measured
point (``extrapolated``). Faces of one enrolled subject are correlated, so counting N as
faces over-counts the independent chances a stranger has; the result errs on the safe side
(a measured FPIR at or below the target; ``bench/impostor_tail.py`` measures how far).

Two floors: the threshold never goes below the recognizer's 1:1 ``match`` threshold (a
small gallery does not make the service more permissive than verification), and never
above 1 (the cosine's maximum; a target no threshold can hold is reported as capped).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

ThresholdSource = Literal[
    "impostor_tail",  # a measured quantile of the impostor tail
    "impostor_tail_extrapolated",  # the fitted tail beyond the deepest measured quantile
    "match_floor",  # the derived threshold was below the 1:1 match threshold
    "capped",  # no similarity of at most 1 holds the target at this size
    "fixed",  # no impostor tail in the manifest: the fixed match threshold
    "request",  # the request's own ``threshold``
]

# The cosine similarity of unit vectors never exceeds 1: a threshold above it is unreachable.
MAX_SIMILARITY = 1.0


@dataclass(frozen=True, slots=True)
class TailPoint:
    """``P(S >= threshold) = far`` for an impostor score ``S``, as measured."""

    far: float
    threshold: float


@dataclass(frozen=True, slots=True)
class ImpostorTail:
    """A recognizer's impostor similarity tail: measured points (any order) and an
    exponential tail beyond the deepest one, ``P(S >= t) = far_d * exp(-(t - t_d) / scale)``
    for ``t`` above the deepest measured point ``(far_d, t_d)``."""

    points: tuple[TailPoint, ...]
    scale: float  # of the fitted exponential tail, in similarity units
    pairs: int  # impostor pairs the points were measured on

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("an impostor tail needs at least one measured point")
        if not self.scale > 0:
            raise ValueError(f"the tail's scale must be positive, got {self.scale}")
        ordered = sorted(self.points, key=lambda point: -point.far)
        for point in ordered:
            if not 0 < point.far < 1:
                raise ValueError(f"a tail point's far must be in (0, 1), got {point.far}")
        for shallower, deeper in itertools.pairwise(ordered):
            if deeper.threshold < shallower.threshold:
                raise ValueError(
                    "the impostor tail is not monotone: far "
                    f"{deeper.far:g} has threshold {deeper.threshold} below "
                    f"{shallower.threshold} at far {shallower.far:g}"
                )
        object.__setattr__(self, "points", tuple(ordered))

    @property
    def deepest(self) -> TailPoint:
        return self.points[-1]

    def threshold_at(self, far: float) -> tuple[float, bool]:
        """The similarity whose impostor exceedance probability is ``far``, and whether it
        lies beyond the measured points (extrapolated by the fitted tail)."""
        if not 0 < far < 1:
            raise ValueError(f"far must be in (0, 1), got {far}")
        points = self.points
        if far >= points[0].far:
            # Shallower than anything measured: the shallowest point (a higher threshold
            # than needed: safe, and the 1:1 floor is higher still in practice).
            return points[0].threshold, False
        deepest = self.deepest
        if far < deepest.far:
            return deepest.threshold + self.scale * math.log(deepest.far / far), True
        for shallower, deeper in itertools.pairwise(points):
            if deeper.far <= far <= shallower.far:
                return _log_linear(shallower, deeper, far), False
        return deepest.threshold, False  # far == deepest.far, reached only through rounding


def _log_linear(shallower: TailPoint, deeper: TailPoint, far: float) -> float:
    """Threshold at ``far`` between two measured points, linear in log(far)."""
    span = math.log(shallower.far) - math.log(deeper.far)
    if span == 0:
        return deeper.threshold
    weight = (math.log(shallower.far) - math.log(far)) / span
    return shallower.threshold + weight * (deeper.threshold - shallower.threshold)


def per_comparison_far(target_fpir: float, comparisons: int) -> float:
    """The false-accept rate per comparison at which the highest of ``comparisons``
    independent impostor scores passes with probability ``target_fpir``:
    ``1 - (1 - FPIR) ** (1 / N)``, computed without cancellation for tiny rates."""
    if not 0 < target_fpir < 1:
        raise ValueError(f"target FPIR must be in (0, 1), got {target_fpir}")
    if comparisons < 1:
        raise ValueError(f"comparisons must be at least 1, got {comparisons}")
    return -math.expm1(math.log1p(-target_fpir) / comparisons)


def expected_fpir(far: float, comparisons: int) -> float:
    """``1 - (1 - far) ** N``: the FPIR that a per-comparison rate gives over N faces."""
    if comparisons < 1:
        return 0.0
    return -math.expm1(comparisons * math.log1p(-far))


@dataclass(frozen=True, slots=True)
class OpenSetThreshold:
    """The threshold identification applies, and what it was derived for."""

    threshold: float
    source: ThresholdSource
    target_fpir: float | None  # None: not derived from a target (fixed, request)
    gallery_size: int  # faces compared (the collection's size it was derived for)
    per_comparison_far: float | None = None


def fixed_threshold(
    threshold: float, gallery_size: int, source: ThresholdSource
) -> OpenSetThreshold:
    """A threshold not derived from a target FPIR (the manifest's match, or a request's)."""
    return OpenSetThreshold(
        threshold=threshold, source=source, target_fpir=None, gallery_size=gallery_size
    )


def derive_threshold(
    tail: ImpostorTail | None, *, gallery_size: int, target_fpir: float, floor: float
) -> OpenSetThreshold:
    """The threshold that holds ``target_fpir`` against ``gallery_size`` faces.

    Without a tail the fixed ``floor`` (the 1:1 match threshold) applies, ``source``
    ``"fixed"``. An empty gallery matches nobody: the floor, as for one face or less.
    """
    if tail is None:
        return OpenSetThreshold(
            threshold=floor, source="fixed", target_fpir=target_fpir, gallery_size=gallery_size
        )
    far = per_comparison_far(target_fpir, max(gallery_size, 1))
    derived, extrapolated = tail.threshold_at(far)
    source: ThresholdSource = "impostor_tail_extrapolated" if extrapolated else "impostor_tail"
    if derived < floor:
        derived, source = floor, "match_floor"
    if derived > MAX_SIMILARITY:
        derived, source = MAX_SIMILARITY, "capped"
    return OpenSetThreshold(
        threshold=derived,
        source=source,
        target_fpir=target_fpir,
        gallery_size=gallery_size,
        per_comparison_far=far,
    )
