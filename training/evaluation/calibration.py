"""Verification thresholds at fixed false-accept rates, with a held-out estimate.

In-sample: the threshold at each FAR over *all* different-identity pairs of the images
(the most pairs, so what a manifest ships), with the TAR over all same-identity pairs.
That FAR is at most the target by construction, on the very pairs that chose it.

Held-out: identities are split into folds by a hash of their name (so any subset of the
images keeps each identity's fold). For each fold, the threshold is chosen on the pairs
whose two identities are both outside it and measured on the pairs whose two identities
are both inside it; pairs across the split are in neither. The pooled held-out FAR and TAR
say what a threshold chosen this way does on faces of people it has never seen.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.evaluation.scores import (
    Embeddings,
    GroupedPairs,
    Scores,
    grouped_pair_scores,
    top_impostor_pairs,
)
from training.evaluation.verification import (
    OperatingPoint,
    allowed_false_accepts,
    calibrate_threshold,
    far_key,
    operating_point,
    point_at,
)

logger = logging.getLogger(__name__)

# False-accept rates a calibration reports and a manifest's ``by_far`` may hold.
CALIBRATION_FARS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# Identity folds of the held-out estimate: with 2, each threshold is chosen on a quarter
# of the pairs and measured on another quarter (the cross-fold half is unused).
HELD_OUT_FOLDS = 2
# A FAR goes into a manifest's by_far when at least this many false accepts are allowed.
MIN_FALSE_ACCEPTS = 10
# Decimals of a shipped threshold; rounded up, so its FAR stays at most the target.
THRESHOLD_DECIMALS = 4


def identity_folds(identities: Sequence[str], folds: int) -> NDArray[np.int64]:
    """The fold of each row's identity: sha256 of the name, modulo ``folds``."""
    if folds < 2:
        raise ValueError(f"a held-out estimate needs at least 2 folds, got {folds}")
    fold_of = {
        name: int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:12], 16) % folds
        for name in set(identities)
    }
    return np.array([fold_of[name] for name in identities], dtype=np.int64)


def round_up(threshold: float, decimals: int = THRESHOLD_DECIMALS) -> float:
    """The smallest number of ``decimals`` decimals that is >= ``threshold``."""
    scale = 10**decimals
    # Rounded first: 0.3556 * 10**4 is 3556.0000000000005 in floating point.
    return float(math.ceil(round(threshold * scale, 9)) / scale)


@dataclass(frozen=True, slots=True)
class HeldOutPoint:
    """One FAR target, per fold: the threshold chosen on the other folds' pairs and what
    it accepts of the fold's own pairs."""

    far_target: float
    thresholds: list[float]
    false_accepts: list[int]
    impostor_pairs: list[int]
    true_accepts: list[int]
    genuine_pairs: list[int]  # including pairs missing a face (never accepted)

    @property
    def far(self) -> float:
        """Pooled over the folds."""
        return sum(self.false_accepts) / max(sum(self.impostor_pairs), 1)

    @property
    def tar(self) -> float:
        return sum(self.true_accepts) / max(sum(self.genuine_pairs), 1)

    @property
    def fold_fars(self) -> list[float]:
        return [
            fa / max(n, 1) for fa, n in zip(self.false_accepts, self.impostor_pairs, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class Calibration:
    images: int  # with a face
    images_without_face: int
    identities: int
    impostor_pairs: int
    genuine_pairs: int  # including those missing a face
    genuine_pairs_missing_face: int  # counted as rejected at every threshold
    in_sample: list[OperatingPoint]
    held_out: list[HeldOutPoint]
    folds: int  # 0: no held-out estimate
    fixed: list[OperatingPoint]  # thresholds given by the caller (e.g. the service's)
    # The most similar different-identity pairs (row, row, similarity), best first: at the
    # smallest FARs these few set the threshold (on LFW some are labelling errors).
    top_impostors: list[tuple[int, int, float]]

    def point(self, far: float) -> OperatingPoint:
        return next(p for p in self.in_sample if p.far_target == far)

    def resolvable(self, far: float) -> bool:
        """At least one false accept is allowed at ``far`` on these pairs."""
        return allowed_false_accepts(far, self.impostor_pairs) >= 1

    def by_far(self) -> dict[str, float]:
        """The manifest's by_far: thresholds rounded up, for FARs with enough pairs."""
        return {
            far_key(p.far_target): round_up(p.threshold)
            for p in self.in_sample
            if p.far_target is not None
            and allowed_false_accepts(p.far_target, self.impostor_pairs) >= MIN_FALSE_ACCEPTS
        }


def _missing_genuine_pairs(
    identities: Sequence[str], found: NDArray[np.bool_], folds: NDArray[np.int64], count: int
) -> NDArray[np.int64]:
    """Same-identity pairs with at least one photo without a face, per fold."""
    everyone = Counter(identities)
    with_face = Counter(name for name, ok in zip(identities, found, strict=True) if ok)
    fold_of = dict(zip(identities, folds.tolist(), strict=True))
    missing = np.zeros(count, dtype=np.int64)
    for name, total in everyone.items():
        kept = with_face.get(name, 0)
        missing[fold_of[name]] += total * (total - 1) // 2 - kept * (kept - 1) // 2
    return missing


def _check_groups(identities: Sequence[str], groups: NDArray[np.int64], folds: int) -> None:
    if groups.shape != (len(identities),) or not np.all((groups >= 0) & (groups < folds)):
        raise ValueError(f"groups must give each row a fold in 0..{folds - 1}")
    fold_of: dict[str, int] = {}
    for name, group in zip(identities, groups.tolist(), strict=True):
        if fold_of.setdefault(name, group) != group:
            raise ValueError(f"identity {name!r} is in two folds: pairs would leak across")


def calibrate(
    embeddings: Embeddings,
    found: NDArray[np.bool_],
    identities: Sequence[str],
    *,
    fars: Sequence[float] = CALIBRATION_FARS,
    folds: int | None = HELD_OUT_FOLDS,
    groups: NDArray[np.int64] | None = None,
    fixed_thresholds: Sequence[float] = (),
    top: int = 10,
) -> Calibration:
    """Thresholds at ``fars`` over all different-identity pairs of the rows, in-sample and
    held out by identity folds (see the module docstring; ``folds=None``: in-sample only).

    ``embeddings`` are unit-norm rows; ``found[i]`` says whether row i had a face (rows
    without one are left out of the impostor pairs: they cannot be falsely accepted;
    their same-identity pairs count as rejected). ``groups`` overrides the folds of the
    held-out estimate: a fold number in ``0 .. folds - 1`` per row, one per identity.
    ``top_impostors`` index the rows.
    """
    if len(identities) != embeddings.shape[0] or found.shape != (embeddings.shape[0],):
        raise ValueError("embeddings, found and identities must have one entry per row")
    if folds is None:
        fold_of = np.zeros(len(identities), dtype=np.int64)
    else:
        fold_of = identity_folds(identities, folds) if groups is None else groups
        _check_groups(identities, fold_of, folds)
    present = np.flatnonzero(found)
    names = [identities[int(i)] for i in present]
    pairs = grouped_pair_scores(embeddings[present], names, fold_of[present])
    missing = _missing_genuine_pairs(identities, found, fold_of, folds or 1)
    impostor = pairs.similarity[~pairs.same]
    if impostor.size == 0:
        raise ValueError("calibration needs faces of at least two identities")
    rejected = np.full(int(missing.sum()), -np.inf, dtype=np.float32)
    genuine = np.concatenate([pairs.similarity[pairs.same], rejected])
    return Calibration(
        images=int(present.size),
        images_without_face=int(found.size - present.size),
        identities=len(set(identities)),
        impostor_pairs=int(impostor.size),
        genuine_pairs=int(genuine.size),
        genuine_pairs_missing_face=int(rejected.size),
        in_sample=[operating_point(genuine, impostor, far) for far in fars],
        held_out=[] if folds is None else _held_out(pairs, missing, fars, folds),
        folds=folds or 0,
        fixed=[point_at(genuine, impostor, t) for t in fixed_thresholds],
        top_impostors=[
            (int(present[i]), int(present[j]), value)
            for i, j, value in top_impostor_pairs(embeddings[present], names, top)
        ],
    )


def _held_out(
    pairs: GroupedPairs, missing: NDArray[np.int64], fars: Sequence[float], folds: int
) -> list[HeldOutPoint]:
    similarity, same = pairs.similarity, pairs.same
    train_impostors, test_impostors, test_genuine = [], [], []
    for fold in range(folds):
        train, test = pairs.outside(fold), pairs.within(fold)
        train_impostors.append(similarity[train & ~same])
        test_impostors.append(similarity[test & ~same])
        test_genuine.append(similarity[test & same])
        if train_impostors[-1].size == 0:
            raise ValueError(f"fold {fold}: no different-identity pairs outside it to calibrate")
    points = []
    for far in fars:
        thresholds = [calibrate_threshold(scores, far) for scores in train_impostors]
        points.append(
            HeldOutPoint(
                far_target=far,
                thresholds=thresholds,
                false_accepts=[
                    int(np.count_nonzero(s >= t))
                    for s, t in zip(test_impostors, thresholds, strict=True)
                ],
                impostor_pairs=[int(s.size) for s in test_impostors],
                true_accepts=[
                    int(np.count_nonzero(s >= t))
                    for s, t in zip(test_genuine, thresholds, strict=True)
                ],
                genuine_pairs=[
                    int(s.size + m) for s, m in zip(test_genuine, missing.tolist(), strict=True)
                ],
            )
        )
    return points


# --- a training run's manifest thresholds -------------------------------------------------


def manifest_thresholds(
    genuine: Scores, impostor: Scores, far: float, *, described_as: str
) -> dict[str, Any]:
    """A fine-tuned model's manifest ``thresholds``: ``match`` at ``far`` on these
    different-identity pairs, ``by_far`` at every calibration FAR the number of pairs
    resolves (>= ``MIN_FALSE_ACCEPTS`` false accepts).

    When too few pairs exist to measure ``far`` at all, the smallest calibration FAR they
    can measure is used instead (logged, and stated in ``far`` and the description).
    """
    wanted = far
    if allowed_false_accepts(far, impostor.size) < 1:
        measurable = [f for f in CALIBRATION_FARS if allowed_false_accepts(f, impostor.size) >= 1]
        if not measurable:
            raise ValueError(
                f"{impostor.size} different-identity pairs cannot calibrate a threshold; "
                f"at least {math.ceil(1 / max(CALIBRATION_FARS))} are needed"
            )
        far = min(measurable)
        logger.warning(
            "FAR %g needs %d different-identity pairs, only %d exist: calibrating at FAR %g",
            wanted,
            math.ceil(1 / wanted),
            impostor.size,
            far,
        )
    match = operating_point(genuine, impostor, far)
    by_far = {
        far_key(f): round(calibrate_threshold(impostor, f), 6)
        for f in sorted({*CALIBRATION_FARS, far}, reverse=True)
        if allowed_false_accepts(f, impostor.size) >= MIN_FALSE_ACCEPTS or f == far
    }
    note = "" if far == wanted else f" (FAR {wanted:g} was asked for: too few pairs)"
    return {
        "match": round(match.threshold, 6),
        "far": far,
        "calibration": (
            f"Similarity at which {far:g} of the {impostor.size:,} different-identity pairs "
            f"among {described_as} are accepted{note}: at most "
            f"{allowed_false_accepts(far, impostor.size)} false accepts, TAR {match.tar:.2%} "
            f"over {genuine.size:,} same-identity pairs. For open-set identification the "
            "chance that an unknown face matches someone grows with gallery size (about "
            "N x FAR for N enrolled faces): raise it for large galleries."
        ),
        "by_far": by_far,
    }
