"""Verification numerics over similarity scores: FAR calibration, TAR at FAR, ROC, and the
10-fold best-threshold accuracy of LFW.

A pair is accepted when ``similarity >= threshold`` (the service's comparison). Genuine
scores are same-identity pairs, impostor scores different-identity pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

Scores = NDArray[np.float32]
Curve = NDArray[np.float32]
# False-accept rates at which every verification report gives the true-accept rate.
REPORT_FARS = (1e-2, 1e-3, 1e-4)


def far_key(far: float) -> str:
    """The manifest's by_far key: 1e-3 -> "1e-3", 2.5e-3 -> "2.5e-3", 0.5 -> "5e-1"."""
    mantissa, exponent = f"{far:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def allowed_false_accepts(far: float, impostor_pairs: int) -> int:
    """At most floor(far x pairs) different-identity pairs may be accepted at ``far``."""
    # Rounded first: 0.29 * 100 is 28.999999999999996 in floating point, and 29 are allowed.
    return math.floor(round(far * impostor_pairs, 9))


def calibrate_threshold(impostor_scores: Scores | NDArray[np.float64], far: float) -> float:
    """The lowest similarity threshold whose false-accept rate on these different-identity
    scores is at most ``far``.

    With n scores, at most k = floor(far x n) may pass: the threshold is the next float32
    above the (k+1)-th highest score, so ties at that score are all rejected.
    """
    scores = np.asarray(impostor_scores, dtype=np.float32).ravel()
    if scores.size == 0:
        raise ValueError("calibration needs at least one different-identity score")
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    k = allowed_false_accepts(far, scores.size)
    kth_highest = np.partition(scores, scores.size - 1 - k)[scores.size - 1 - k]
    return float(np.nextafter(np.float32(kth_highest), np.float32(np.inf)))


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A threshold and what it does to the pairs: ``far`` <= ``far_target`` when calibrated
    on these pairs; ``far_target`` is None for a threshold given from outside."""

    far_target: float | None
    threshold: float
    false_accepts: int
    far: float  # false_accepts / impostor pairs
    tar: float  # same-identity pairs accepted (nan without any)

    @property
    def label(self) -> str:
        """The FAR key ("1e-3") of a calibrated point, else the threshold itself."""
        if self.far_target is None:
            return f"threshold {self.threshold:.4f}"
        return far_key(self.far_target)


def point_at(
    genuine: Scores, impostor: Scores, threshold: float, far_target: float | None = None
) -> OperatingPoint:
    """What ``threshold`` accepts of these pairs."""
    false_accepts = int(np.count_nonzero(impostor >= threshold))
    return OperatingPoint(
        far_target=far_target,
        threshold=threshold,
        false_accepts=false_accepts,
        far=false_accepts / impostor.size if impostor.size else math.nan,
        tar=float(np.mean(genuine >= threshold)) if genuine.size else math.nan,
    )


def operating_point(genuine: Scores, impostor: Scores, far: float) -> OperatingPoint:
    """The threshold calibrated at ``far`` on ``impostor``, with its TAR on ``genuine``."""
    return point_at(genuine, impostor, calibrate_threshold(impostor, far), far)


def roc_curve(genuine: Scores, impostor: Scores) -> tuple[Curve, Curve, Curve]:
    """(false-accept rates, true-accept rates, thresholds), thresholds descending, from
    (0, 0) at threshold +inf to (1, 1) at the lowest score; one point per distinct score."""
    scores = np.concatenate([genuine, impostor]).astype(np.float32)
    is_genuine = np.concatenate([np.ones(genuine.size, bool), np.zeros(impostor.size, bool)])
    order = np.argsort(-scores, kind="stable")
    scores, is_genuine = scores[order], is_genuine[order]
    # One point per distinct threshold: the last index of each run of equal scores.
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_accepts = np.cumsum(is_genuine)[last]
    false_accepts = (last + 1) - true_accepts
    tar = (true_accepts / max(genuine.size, 1)).astype(np.float32)
    far = (false_accepts / max(impostor.size, 1)).astype(np.float32)
    thresholds = np.r_[np.float32(np.inf), scores[last]].astype(np.float32)
    return np.r_[np.float32(0), far], np.r_[np.float32(0), tar], thresholds


def area_under(far: Curve, tar: Curve) -> float:
    """Trapezoidal area under the ROC (FAR on x)."""
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


@dataclass(frozen=True, slots=True)
class Verification:
    """One verification protocol's figures; ``curve`` is kept for plotting, not reported."""

    genuine_pairs: int
    impostor_pairs: int
    points: list[OperatingPoint]
    auc: float
    curve: tuple[Curve, Curve] = field(repr=False)

    def tar(self, far: float) -> float:
        return next(p.tar for p in self.points if p.far_target == far)

    def summary(self) -> dict[str, Any]:
        return {
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "auc": round(self.auc, 6),
            "tar_at_far": {p.label: round(p.tar, 6) for p in self.points},
            "threshold_at_far": {p.label: round(p.threshold, 6) for p in self.points},
        }


def verify(genuine: Scores, impostor: Scores, fars: Sequence[float] = REPORT_FARS) -> Verification:
    """TAR at each FAR (thresholds calibrated on these impostor pairs), AUC and the ROC."""
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError("verification needs same-identity and different-identity pairs")
    far, tar, _ = roc_curve(genuine, impostor)
    return Verification(
        genuine_pairs=int(genuine.size),
        impostor_pairs=int(impostor.size),
        points=[operating_point(genuine, impostor, f) for f in fars],
        auc=area_under(far, tar),
        curve=(far, tar),
    )


# --- LFW 10-fold accuracy -----------------------------------------------------------------


def best_accuracy_threshold(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> float:
    """The score threshold (accept >= t) with the highest accuracy; the lowest on ties.

    Candidates are the scores themselves: any threshold between two consecutive scores
    classifies like the higher one.
    """
    if scores.size == 0:
        raise ValueError("the best threshold needs at least one pair")
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order]
    # Threshold at sorted_scores[i]: rows below i rejected, from i on accepted.
    rejected_different = np.r_[0, np.cumsum(~sorted_same)]
    accepted_same = np.r_[np.cumsum(sorted_same[::-1])[::-1], 0]
    correct = (rejected_different + accepted_same)[:-1]
    # Only the first index of a run of equal scores is a realisable threshold.
    first = np.r_[True, np.diff(sorted_scores) > 0]
    candidates = np.flatnonzero(first)
    return float(sorted_scores[candidates[int(np.argmax(correct[candidates]))]])


@dataclass(frozen=True, slots=True)
class FoldAccuracy:
    mean: float
    std: float  # population standard deviation over the folds (the LFW convention)
    accuracies: list[float]  # per fold
    thresholds: list[float]  # per fold, chosen on the other folds


def ten_fold_accuracy(
    scores: NDArray[np.float64], same: NDArray[np.bool_], folds: NDArray[np.int64]
) -> FoldAccuracy:
    """For each fold: the best-accuracy threshold of the other folds, measured on it."""
    if np.unique(folds).size < 2:
        raise ValueError("the fold protocol needs pairs from at least 2 folds")
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = best_accuracy_threshold(scores[train], same[train])
        thresholds.append(threshold)
        accuracies.append(float(np.mean((scores[test] >= threshold) == same[test])))
    return FoldAccuracy(
        mean=float(np.mean(accuracies)),
        std=float(np.std(accuracies)),
        accuracies=accuracies,
        thresholds=thresholds,
    )
