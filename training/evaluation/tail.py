"""The upper tail of an impostor similarity distribution, measured on streamed scores.

Impostor pairs of a few thousand identities number 1e7-1e8: too many to keep. The
accumulator keeps only the highest ``keep`` scores exactly (the tail is all that
open-set thresholds read) and counts the rest. From them:

- quantiles at false-accept rates ``far``: the lowest threshold that at most
  ``floor(far x pairs)`` scores reach (``verification.calibrate_threshold``'s rule),
  measured where at least ``min_exceedances`` scores lie above it;
- an exponential tail (generalised Pareto with shape 0) fitted to the excesses over the
  quantile at ``fit_far``: what ``app.core.openset`` extrapolates with beyond the deepest
  measured quantile. The scale is the median excess / ln 2 (the exponential's median),
  not the mean: a few pairs of one person under two names (LFW has some) lie at 0.8-0.96,
  far above any impostor, and would make a mean-excess fit's tail half as heavy again.
  A cosine is bounded by 1, so its true tail is lighter than an exponential: thresholds
  extrapolated with this fit err high (fewer false matches than targeted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from training.evaluation.verification import allowed_false_accepts, far_key

# Half-decade grid of rates the tail is tabulated at (1e-2 ... 1e-9).
TAIL_FARS = tuple(
    float(f"{mantissa}e-{exponent}") for exponent in range(2, 10) for mantissa in (3, 1)
)[1:]
# A quantile counts as measured when this many impostor scores lie above it (the
# exceedance count's relative standard error is then at most 1/sqrt(100), 10%).
MIN_EXCEEDANCES = 100
# The exponential tail is fitted to the excesses over the quantile at this rate.
DEFAULT_FIT_FAR = 1e-5


@dataclass(frozen=True, slots=True)
class TailQuantile:
    far: float
    threshold: float
    exceedances: int  # impostor scores at or above the threshold

    @property
    def label(self) -> str:
        return far_key(self.far)


@dataclass(frozen=True, slots=True)
class MeasuredTail:
    pairs: int
    quantiles: list[TailQuantile]  # shallowest first
    fit_far: float
    fit_threshold: float
    fit_exceedances: int
    scale: float  # exponential tail's scale: median excess over fit_threshold / ln 2
    top_scores: list[float]  # the highest few, best first (look-alikes / label noise)


class TailAccumulator:
    """Counts impostor scores and keeps the ``keep`` highest exactly."""

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self.pairs = 0
        self._kept = np.empty(0, np.float32)
        self._pending: list[NDArray[np.float32]] = []
        self._pending_size = 0
        self._cutoff = -np.inf  # every score below it is out of the top ``keep``

    def add(self, scores: NDArray[np.float32]) -> None:
        flat = np.asarray(scores, dtype=np.float32).ravel()
        self.pairs += flat.size
        candidates = flat[flat >= self._cutoff]
        if candidates.size:
            self._pending.append(candidates)
            self._pending_size += candidates.size
        if self._pending_size >= self.keep:
            self._compact()

    def _compact(self) -> None:
        merged = np.concatenate([self._kept, *self._pending])
        self._pending, self._pending_size = [], 0
        if merged.size > self.keep:
            merged = np.partition(merged, merged.size - self.keep)[merged.size - self.keep :]
            self._cutoff = float(merged.min())
        self._kept = merged

    def highest(self) -> NDArray[np.float32]:
        """The kept scores, highest first."""
        self._compact()
        return np.sort(self._kept)[::-1]

    def measure(
        self,
        fars: Sequence[float] = TAIL_FARS,
        *,
        min_exceedances: int = MIN_EXCEEDANCES,
        fit_far: float = DEFAULT_FIT_FAR,
        top: int = 10,
    ) -> MeasuredTail:
        """Quantiles at ``fars`` where measurable, and the exponential tail fitted over the
        quantile at ``fit_far`` (or the deepest measured one, when ``fit_far`` is deeper)."""
        highest = self.highest()
        if self.pairs == 0:
            raise ValueError("no impostor scores were added")
        quantiles = [
            q
            for far in sorted(fars, reverse=True)
            if (q := _quantile(highest, self.pairs, far, min_exceedances)) is not None
        ]
        if not quantiles:
            raise ValueError(
                f"{self.pairs:,} pairs are too few to measure any quantile of {list(fars)}"
            )
        # Anchored at fit_far, or at the deepest measured quantile when that is shallower.
        fit = _quantile(highest, self.pairs, fit_far, min_exceedances) or quantiles[-1]
        excesses = highest[highest >= fit.threshold].astype(np.float64) - fit.threshold
        return MeasuredTail(
            pairs=self.pairs,
            quantiles=quantiles,
            fit_far=fit.far,
            fit_threshold=fit.threshold,
            fit_exceedances=int(excesses.size),
            scale=exponential_scale(excesses),
            top_scores=[float(s) for s in highest[:top]],
        )


def _quantile(
    highest: NDArray[np.float32], pairs: int, far: float, min_exceedances: int
) -> TailQuantile | None:
    """The threshold at ``far``, or None when fewer than ``min_exceedances`` scores may pass
    or the kept scores do not reach that deep into the distribution."""
    allowed = allowed_false_accepts(far, pairs)
    if allowed < min_exceedances or allowed >= highest.size:
        return None
    threshold = float(np.nextafter(highest[allowed], np.float32(np.inf)))
    exceedances = int(np.count_nonzero(highest >= threshold))
    return TailQuantile(far=far, threshold=threshold, exceedances=exceedances)


def keep_for(pairs: int, shallowest_far: float) -> int:
    """Scores to keep so the quantile at ``shallowest_far`` of ``pairs`` is exact."""
    return max(math.ceil(shallowest_far * pairs) + 2, 1)


def exponential_scale(excesses: NDArray[np.float64]) -> float:
    """Scale of an exponential fitted to excesses over an anchor, from their median
    (median = scale x ln 2): robust to a few gross outliers at the top."""
    if excesses.size == 0:
        raise ValueError("fitting a tail needs at least one excess")
    if float(excesses.min()) < 0:
        raise ValueError("excesses are scores minus the anchor: none may be negative")
    scale = float(np.median(excesses)) / math.log(2)
    if scale <= 0:
        raise ValueError("the excesses have no spread to fit a tail to")
    return scale
