"""Distractor faces that look like faces: synthetic identities in the span of real ones.

A million real face photos are not available here, and uniform random vectors are
useless as distractors (in 512 dimensions they are all nearly orthogonal to every
face and to each other, so any index finds the mate trivially). Instead the
distractors are built from real embeddings of the shared data sets (``real_faces``),
using only *background* identities (never those whose photos are probes):

1. **Identity centres.** Each background identity's mean embedding, normalised. A
   synthetic identity's centre is a random Gaussian mixture of the real centres:
   ``mu + sum_j z_j (c_j - mu) / sqrt(K)`` with ``z ~ N(0, 1)``, i.e. a draw from the
   Gaussian with the real centres' mean and covariance (sampled through the
   covariance's eigendecomposition, which is the same distribution, cheaper).
   Pairs of synthetic identities are then about as similar as pairs of real ones.
2. **Faces of an identity.** A face is ``normalise(a * centre + d)`` where ``d`` is a
   real within-identity deviation (a real face minus its identity's mean: pose,
   light, expression, image quality), drawn at random from all background faces.
   ``a`` is fitted so that synthetic same-identity pairs are as similar as real
   ones (median), which also brings impostor similarities to the real level.
3. **Faces per identity**: ``1 + Poisson(3)``, a few photos per person like a real
   gallery; rows are grouped by identity, subjects named ``distractor-<n>``.

``similarity_report`` compares the result with real faces: impostor similarities
(distractor vs distractor, distractor vs real probe faces, real vs real) and
genuine similarities, at the quantiles that matter for a million-face search. The
benchmark prints it, so the reader can judge how face-like the distractors are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from app.core.types import FloatArray
from bench.real_faces import RealFaces

MEAN_FACES_PER_IDENTITY = 4  # 1 + Poisson(3)
# Quantiles of the impostor distribution that a large search actually meets: at 1M
# distractors a probe meets ~1e6 impostor scores, so the 1e-5 and 1e-6 tails decide
# whether a distractor outranks the mate.
IMPOSTOR_QUANTILES = (0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
GENUINE_QUANTILES = (0.01, 0.1, 0.5, 0.9)
_SCALE_GRID = np.linspace(0.3, 1.6, 27)


@dataclass(frozen=True, slots=True)
class DistractorModel:
    """What synthesis needs from the background faces."""

    mean: FloatArray  # (dim,)
    basis: FloatArray  # (dim, dim) eigenvectors * sqrt(eigenvalues) of the centre covariance
    deviations: FloatArray  # (M, dim) real faces minus their identity's mean
    centre_scale: float  # ``a`` above


@dataclass(frozen=True, slots=True)
class Distractors:
    subjects: list[str]
    embeddings: FloatArray  # (N, dim) float32, unit norm, grouped by subject


def group_by_identity(faces: RealFaces) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for row, identity in enumerate(faces.identities):
        rows[identity].append(row)
    return dict(rows)


def fit_model(background: RealFaces, *, seed: int) -> DistractorModel:
    """Fit centres and deviations on ``background`` faces, and the centre scale."""
    groups = group_by_identity(background)
    embeddings = background.embeddings.astype(np.float64)
    centres = np.stack([_unit(embeddings[rows].mean(axis=0)) for rows in groups.values()])
    deviations = np.concatenate(
        [
            embeddings[rows] - embeddings[rows].mean(axis=0)
            for rows in groups.values()
            if len(rows) > 1
        ]
    )
    mean = centres.mean(axis=0)
    covariance = np.cov(centres, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    basis = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    model = DistractorModel(
        mean=mean.astype(np.float32),
        basis=basis.astype(np.float32),
        deviations=deviations.astype(np.float32),
        centre_scale=1.0,
    )
    target = float(np.median(genuine_similarities(background, limit=200_000, seed=seed)))
    return _fit_scale(model, target, seed=seed)


def synthesize(model: DistractorModel, count: int, *, seed: int) -> Distractors:
    """``count`` distractor faces (exactly), grouped into synthetic identities."""
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.extend((1 + rng.poisson(MEAN_FACES_PER_IDENTITY - 1, size=4096)).tolist())
    cumulative = np.cumsum(sizes)
    identities = int(np.searchsorted(cumulative, count) + 1)
    sizes = sizes[:identities]
    sizes[-1] -= int(cumulative[identities - 1] - count)
    embeddings = np.empty((count, model.mean.shape[0]), dtype=np.float32)
    subjects: list[str] = []
    row = 0
    chunk = 8192
    for first in range(0, identities, chunk):
        chunk_sizes = np.asarray(sizes[first : first + chunk])
        centres = _centres(model, len(chunk_sizes), rng)
        owners = np.repeat(np.arange(len(chunk_sizes)), chunk_sizes)
        faces = _faces(model, centres[owners], rng)
        embeddings[row : row + len(faces)] = faces
        subjects += [f"distractor-{first + owner}" for owner in owners.tolist()]
        row += len(faces)
    return Distractors(subjects=subjects, embeddings=embeddings)


def genuine_similarities(faces: RealFaces, *, limit: int, seed: int) -> FloatArray:
    """Similarities of same-identity pairs (all of them, or ``limit`` sampled)."""
    groups = [rows for rows in group_by_identity(faces).values() if len(rows) > 1]
    firsts, seconds = [], []
    for rows in groups:
        index = np.asarray(rows)
        upper = np.triu_indices(len(index), k=1)
        firsts.append(index[upper[0]])
        seconds.append(index[upper[1]])
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    if len(first) > limit:
        keep = np.random.default_rng(seed).choice(len(first), limit, replace=False)
        first, second = first[keep], second[keep]
    similarities: FloatArray = np.einsum(
        "ij,ij->i", faces.embeddings[first], faces.embeddings[second]
    ).astype(np.float32)
    return similarities


def impostor_similarities(
    left: FloatArray,
    left_identities: Sequence[str],
    right: FloatArray,
    right_identities: Sequence[str],
    *,
    limit: int,
    seed: int,
) -> FloatArray:
    """Similarities of ``limit`` random different-identity pairs (left x right)."""
    rng = np.random.default_rng(seed)
    left_ids, right_ids = np.asarray(left_identities), np.asarray(right_identities)
    collected: list[FloatArray] = []
    total = 0
    while total < limit:
        first = rng.integers(0, len(left), size=min(limit, 1 << 20))
        second = rng.integers(0, len(right), size=len(first))
        keep = left_ids[first] != right_ids[second]
        values = np.einsum("ij,ij->i", left[first[keep]], right[second[keep]])
        collected.append(values.astype(np.float32))
        total += len(values)
    similarities: FloatArray = np.concatenate(collected)[:limit]
    return similarities


def quantiles(values: FloatArray, levels: Sequence[float]) -> list[float]:
    return [float(value) for value in np.quantile(values, levels)]


def _centres(model: DistractorModel, count: int, rng: np.random.Generator) -> FloatArray:
    draws = rng.standard_normal((count, model.basis.shape[1])).astype(np.float32)
    return _unit_rows(model.mean + draws @ model.basis.T)


def _faces(model: DistractorModel, centres: FloatArray, rng: np.random.Generator) -> FloatArray:
    picked = model.deviations[rng.integers(0, len(model.deviations), size=len(centres))]
    return _unit_rows(model.centre_scale * centres + picked)


def _fit_scale(model: DistractorModel, target: float, *, seed: int) -> DistractorModel:
    """The centre scale whose synthetic genuine-pair median is closest to ``target``."""
    rng = np.random.default_rng(seed)
    centres = _centres(model, 4000, rng)
    first = model.deviations[rng.integers(0, len(model.deviations), size=len(centres))]
    second = model.deviations[rng.integers(0, len(model.deviations), size=len(centres))]
    best, best_gap = 1.0, float("inf")
    for scale in _SCALE_GRID.tolist():
        a, b = _unit_rows(scale * centres + first), _unit_rows(scale * centres + second)
        gap = abs(float(np.median(np.einsum("ij,ij->i", a, b))) - target)
        if gap < best_gap:
            best, best_gap = scale, gap
    return DistractorModel(
        mean=model.mean, basis=model.basis, deviations=model.deviations, centre_scale=best
    )


def _unit(vector: NDArray[np.float64]) -> NDArray[np.float64]:
    result: NDArray[np.float64] = vector / np.linalg.norm(vector)
    return result


def _unit_rows(rows: FloatArray) -> FloatArray:
    result: FloatArray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return result
