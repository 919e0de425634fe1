"""Evaluation numerics: verification (ROC, TAR at FAR, 10-fold accuracy), identification
rank-1, threshold calibration, the CFP and LFW protocols, ROC plots.

Pure numpy over unit-norm embeddings (similarity = dot product); nothing here
needs PyTorch, so the service's benchmarks can share it. Embeddings come from
anything with the service's ``Embedder`` shape (``.embed(aligned_faces)``): the
service's own onnxruntime ``ArcFaceEmbedder`` or ``training.engine.TorchEmbedder``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from app.core.pipeline import Embedder
from app.core.types import FloatArray

logger = logging.getLogger(__name__)

Scores = NDArray[np.float32]
# False-accept rates at which every verification report gives the true-accept rate.
REPORT_FARS = (1e-2, 1e-3, 1e-4)
# Similarity of a pair when either photo has no detected face: below any threshold,
# so a same-identity pair is wrong (a different-identity pair is then right).
MISSING_SCORE = -1.0
# Rows of a similarity matrix computed at once: memory stays rows x n floats.
BLOCK_ROWS = 1024
# Points kept on a plotted ROC curve; the full curve has one per distinct score.
PLOT_POINTS = 2000


def far_key(far: float) -> str:
    """1e-3 -> "1e-3" (the manifest's by_far keys)."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e-{int(exponent[1:])}" if exponent.startswith("-") else f"{far:g}"


def embed_faces(
    embedder: Embedder,
    crops: NDArray[np.uint8],
    *,
    batch_size: int = 128,
    desc: str = "embed",
    progress: bool = True,
) -> FloatArray:
    """(N, 112, 112, 3) uint8 RGB crops -> (N, dim) unit-norm embeddings, in batches."""
    parts = [
        embedder.embed(crops[start : start + batch_size])
        for start in tqdm(
            range(0, crops.shape[0], batch_size), desc=desc, unit="batch", disable=not progress
        )
    ]
    if not parts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


# --- thresholds and verification ---------------------------------------------------------


def calibrate_threshold(impostor_scores: Scores | NDArray[np.float64], far: float) -> float:
    """The lowest similarity threshold whose false-accept rate on these different-identity
    scores is at most ``far`` (accept when ``similarity >= threshold``).

    With n scores, at most k = floor(far * n) may pass: the threshold is the next float
    above the (k+1)-th highest score, so ties at that score are all rejected.
    """
    scores = np.asarray(impostor_scores, dtype=np.float32).ravel()
    if scores.size == 0:
        raise ValueError("calibration needs at least one different-identity score")
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    k = math.floor(far * scores.size)
    kth_highest = np.partition(scores, scores.size - 1 - k)[scores.size - 1 - k]
    return float(np.nextafter(np.float32(kth_highest), np.float32(np.inf)))


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    far_target: float
    threshold: float
    tar: float  # same-identity pairs accepted
    far: float  # different-identity pairs accepted (<= far_target)


def operating_point(genuine: Scores, impostor: Scores, far: float) -> OperatingPoint:
    threshold = calibrate_threshold(impostor, far)
    return OperatingPoint(
        far_target=far,
        threshold=threshold,
        tar=float(np.mean(genuine >= threshold)) if genuine.size else math.nan,
        far=float(np.mean(impostor >= threshold)),
    )


def roc_curve(genuine: Scores, impostor: Scores) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(false-accept rates, true-accept rates, thresholds), thresholds descending."""
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
    return np.r_[np.float32(0), far], np.r_[np.float32(0), tar], np.r_[np.inf, scores[last]]


def area_under(far: FloatArray, tar: FloatArray) -> float:
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


@dataclass(frozen=True, slots=True)
class Verification:
    """One verification protocol's figures; ``curve`` is kept for plotting, not reported."""

    genuine_pairs: int
    impostor_pairs: int
    points: list[OperatingPoint]
    auc: float
    curve: tuple[FloatArray, FloatArray] = field(repr=False)

    def tar(self, far: float) -> float:
        return next(p.tar for p in self.points if p.far_target == far)

    def summary(self) -> dict[str, Any]:
        return {
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "auc": round(self.auc, 6),
            "tar_at_far": {far_key(p.far_target): round(p.tar, 6) for p in self.points},
            "threshold_at_far": {far_key(p.far_target): round(p.threshold, 6) for p in self.points},
        }


def verify(genuine: Scores, impostor: Scores, fars: Sequence[float] = REPORT_FARS) -> Verification:
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


# --- pair construction --------------------------------------------------------------------


def _codes(identities: Sequence[str], vocabulary: Sequence[str]) -> NDArray[np.int64]:
    index = {name: i for i, name in enumerate(vocabulary)}
    return np.array([index[name] for name in identities], dtype=np.int64)


def all_pair_scores(embeddings: FloatArray, identities: Sequence[str]) -> tuple[Scores, Scores]:
    """(same-identity, different-identity) similarities of every unordered pair of rows."""
    labels = _codes(identities, sorted(set(identities)))
    n = embeddings.shape[0]
    genuine, impostor = [], []
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        similarities = embeddings[start:stop] @ embeddings[start:].T
        later = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
        same = labels[start:stop, None] == labels[None, start:]
        genuine.append(similarities[later & same])
        impostor.append(similarities[later & ~same])
    return np.concatenate(genuine).astype(np.float32), np.concatenate(impostor).astype(np.float32)


def cross_pair_scores(
    first: FloatArray,
    first_ids: Sequence[str],
    second: FloatArray,
    second_ids: Sequence[str],
) -> tuple[Scores, Scores]:
    """(same, different) similarities of every pair (a, b), a from ``first``, b from ``second``."""
    vocabulary = sorted(set(first_ids) | set(second_ids))
    a, b = _codes(first_ids, vocabulary), _codes(second_ids, vocabulary)
    genuine, impostor = [], []
    for start in range(0, first.shape[0], BLOCK_ROWS):
        similarities = first[start : start + BLOCK_ROWS] @ second.T
        same = a[start : start + BLOCK_ROWS, None] == b[None, :]
        genuine.append(similarities[same])
        impostor.append(similarities[~same])
    return np.concatenate(genuine).astype(np.float32), np.concatenate(impostor).astype(np.float32)


def rank1(
    gallery: FloatArray,
    gallery_ids: Sequence[str],
    probes: FloatArray,
    probe_ids: Sequence[str],
    *,
    leave_one_out: bool = False,
) -> float:
    """Share of probes whose most similar gallery face has their identity.

    ``leave_one_out``: gallery and probes are the same rows; a probe never matches itself.
    """
    similarities = probes @ gallery.T
    if leave_one_out:
        np.fill_diagonal(similarities, -np.inf)
    best = np.argmax(similarities, axis=1)
    return float(
        np.mean([gallery_ids[int(i)] == probe for i, probe in zip(best, probe_ids, strict=True)])
    )


# --- protocols ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolResult:
    verification: dict[str, Verification]  # protocol name -> figures
    rank1: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "verification": {name: v.summary() for name, v in self.verification.items()},
            "rank1": {name: round(value, 6) for name, value in self.rank1.items()},
        }


def cfp_protocol(
    embeddings: FloatArray, identities: Sequence[str], poses: Sequence[str | None]
) -> ProtocolResult:
    """CFP on the given identities: every frontal-frontal and frontal-profile pair, and
    rank-1 of profile probes against a gallery of all frontal faces."""
    pose = np.array([p or "" for p in poses])
    frontal, profile = np.flatnonzero(pose == "frontal"), np.flatnonzero(pose == "profile")
    if frontal.size == 0 or profile.size == 0:
        raise ValueError("the CFP protocol needs frontal/ and profile/ photos")
    frontal_ids = [identities[int(i)] for i in frontal]
    profile_ids = [identities[int(i)] for i in profile]
    ff = all_pair_scores(embeddings[frontal], frontal_ids)
    fp = cross_pair_scores(embeddings[frontal], frontal_ids, embeddings[profile], profile_ids)
    return ProtocolResult(
        verification={"frontal_frontal": verify(*ff), "frontal_profile": verify(*fp)},
        rank1={
            "profile_to_frontal": rank1(
                embeddings[frontal], frontal_ids, embeddings[profile], profile_ids
            )
        },
    )


def pairs_protocol(embeddings: FloatArray, identities: Sequence[str]) -> ProtocolResult:
    """Any identity folders: every pair of the faces, and leave-one-out rank-1."""
    return ProtocolResult(
        verification={"all_pairs": verify(*all_pair_scores(embeddings, identities))},
        rank1={
            "leave_one_out": rank1(
                embeddings, identities, embeddings, identities, leave_one_out=True
            )
        },
    )


def is_cfp_layout(poses: Sequence[str | None]) -> bool:
    return {"frontal", "profile"} <= set(poses)


def validation_protocol(
    embeddings: FloatArray, identities: Sequence[str], poses: Sequence[str | None]
) -> ProtocolResult:
    """CFP when the photos are in frontal/ and profile/ folders, all pairs otherwise."""
    if is_cfp_layout(poses):
        return cfp_protocol(embeddings, identities, poses)
    return pairs_protocol(embeddings, identities)


def headline_metric(result: ProtocolResult, far: float = 1e-3) -> tuple[str, float]:
    """The early-stopping metric: frontal-profile TAR at ``far`` if present, else all pairs."""
    name = "frontal_profile" if "frontal_profile" in result.verification else "all_pairs"
    return f"{name}_tar@{far_key(far)}", result.verification[name].tar(far)


# --- LFW ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LfwPair:
    first: str  # path relative to lfw/images
    second: str
    same: bool
    fold: int


def _lfw_image(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_lfw_pairs(pairs_file: Path) -> list[LfwPair]:
    """pairs.txt of LFW View 2: header ``folds per_fold``, then per fold the same pairs
    (``name a b``) and the different pairs (``name_a a name_b b``)."""
    lines = [line for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    folds, per_fold = (int(v) for v in lines[0].split())
    pairs = []
    for index, line in enumerate(lines[1:]):
        row = line.split()
        fold = index // (2 * per_fold)
        if len(row) == 3:
            pairs.append(
                LfwPair(
                    _lfw_image(row[0], int(row[1])), _lfw_image(row[0], int(row[2])), True, fold
                )
            )
        elif len(row) == 4:
            pairs.append(
                LfwPair(
                    _lfw_image(row[0], int(row[1])), _lfw_image(row[2], int(row[3])), False, fold
                )
            )
        else:
            raise ValueError(f"{pairs_file}:{index + 2}: cannot parse {line!r}")
    if len(pairs) != folds * 2 * per_fold:
        raise ValueError(f"{pairs_file}: expected {folds * 2 * per_fold} pairs, got {len(pairs)}")
    return pairs


def best_accuracy_threshold(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> float:
    """The score threshold (accept >= t) with the highest accuracy; the lowest on ties."""
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


def ten_fold_accuracy(
    scores: NDArray[np.float64], same: NDArray[np.bool_], folds: NDArray[np.int64]
) -> tuple[float, float, list[float]]:
    """Threshold chosen on 9 folds, accuracy measured on the 10th: (mean, std, thresholds)."""
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = best_accuracy_threshold(scores[train], same[train])
        thresholds.append(threshold)
        accuracies.append(float(np.mean((scores[test] >= threshold) == same[test])))
    return float(np.mean(accuracies)), float(np.std(accuracies)), thresholds


def lfw_accuracy(pairs: Sequence[LfwPair], embeddings: Mapping[str, FloatArray]) -> dict[str, Any]:
    """10-fold accuracy over ``pairs``; a photo missing from ``embeddings`` had no face."""
    scores = np.array(
        [
            float(embeddings[p.first] @ embeddings[p.second])
            if p.first in embeddings and p.second in embeddings
            else MISSING_SCORE
            for p in pairs
        ]
    )
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs], dtype=np.int64)
    mean, std, thresholds = ten_fold_accuracy(scores, same, folds)
    missing = sum(1 for p in pairs if p.first not in embeddings or p.second not in embeddings)
    return {
        "pairs": len(pairs),
        "pairs_missing_face": missing,
        "accuracy": round(mean, 6),
        "std": round(std, 6),
        "mean_threshold": round(float(np.mean(thresholds)), 6),
    }


# --- plots --------------------------------------------------------------------------------


def plot_roc(curves: Mapping[str, tuple[FloatArray, FloatArray]], path: Path, title: str) -> Path:
    """ROC curves (TAR against FAR, log FAR axis) as a PNG; one line per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for label, (far, tar) in curves.items():
        # Log axis: drop FAR 0; thin long curves geometrically (dense at low FAR).
        kept = np.flatnonzero(far > 0)
        if kept.size > PLOT_POINTS:
            kept = kept[np.unique(np.geomspace(1, kept.size, PLOT_POINTS).astype(int) - 1)]
        axes.plot(far[kept], tar[kept], label=label, linewidth=1.5)
    for far_mark in REPORT_FARS:
        axes.axvline(far_mark, color="0.85", linewidth=0.8, zorder=0)
    axes.set_xscale("log")
    axes.set_xlim(1e-5, 1)
    axes.set_ylim(0, 1.001)
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


# --- calibration for the manifest ---------------------------------------------------------

# False-accept rates recorded in a manifest's ``by_far`` when the pairs can resolve them.
CALIBRATION_FARS = (1e-2, 1e-3, 1e-4, 1e-5)
# A FAR is resolvable when at least this many different-identity pairs would be accepted.
MIN_FALSE_ACCEPTS = 10


def manifest_thresholds(
    genuine: Scores, impostor: Scores, far: float, *, described_as: str
) -> dict[str, Any]:
    """The manifest's ``thresholds``: ``match`` at ``far`` on these different-identity pairs,
    ``by_far`` at every standard FAR the number of pairs resolves (>= 10 false accepts).

    When too few pairs exist to measure ``far`` at all, the smallest standard FAR they
    can measure is used instead (logged, and stated in ``far`` and the description).
    """
    wanted = far
    if far * impostor.size < 1:
        measurable = [f for f in CALIBRATION_FARS if f * impostor.size >= 1]
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
        if f * impostor.size >= MIN_FALSE_ACCEPTS or f == far
    }
    note = "" if far == wanted else f" (FAR {wanted:g} was asked for: too few pairs)"
    return {
        "match": round(match.threshold, 6),
        "far": far,
        "calibration": (
            f"Similarity at which {far:g} of the {impostor.size:,} different-identity pairs "
            f"among {described_as} are accepted{note}: at most "
            f"{math.floor(far * impostor.size)} false accepts, TAR {match.tar:.2%} over "
            f"{genuine.size:,} same-identity pairs. For open-set identification the chance "
            "that an unknown face matches someone grows with gallery size (about N x FAR "
            "for N enrolled faces): raise it for large galleries."
        ),
        "by_far": by_far,
    }
