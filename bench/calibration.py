"""Verification threshold calibration: thresholds at fixed false-accept rates.

Pure numerics over an embedding matrix; ``bench.accuracy`` feeds it the LFW
embeddings it got from the service. This is how a recognizer manifest's
``thresholds`` (match and by_far) are chosen.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from app.core.types import FloatArray

# False-accept rates reported by default; the manifest threshold is picked from these.
CALIBRATION_FARS = (1e-3, 1e-4, 1e-5, 1e-6)
# Rows of the impostor similarity matrix computed at once (rows x images x 4 bytes).
CALIBRATION_BLOCK_ROWS = 1024


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    far_target: float | None  # None: the service's configured threshold
    threshold: float  # accept when similarity >= threshold
    false_accepts: int
    far: float
    tar: float


@dataclass(frozen=True, slots=True)
class Calibration:
    images: int  # with a face
    impostor_pairs: int
    genuine_pairs: int
    genuine_pairs_missing_face: int  # counted as rejected at every threshold
    points: list[OperatingPoint]
    service: OperatingPoint
    # The most similar different-identity pairs (image index, image index, similarity),
    # best first: at the smallest FARs these few pairs set the threshold, and on LFW
    # some of them are labelling errors or near-duplicates worth looking at.
    top_impostors: list[tuple[int, int, float]]


def genuine_scores(
    embeddings: FloatArray, found: NDArray[np.bool_], identities: Sequence[str]
) -> NDArray[np.float32]:
    """Similarities of all same-identity pairs; a pair missing a face scores -inf."""
    members: dict[str, list[int]] = defaultdict(list)
    for position, identity in enumerate(identities):
        members[identity].append(position)
    parts = []
    for indices in members.values():
        if len(indices) < 2:
            continue
        group = np.array(indices)
        similarities = embeddings[group] @ embeddings[group].T
        both_found = found[group][:, None] & found[group][None, :]
        upper = np.triu_indices(len(group), k=1)
        parts.append(np.where(both_found, similarities, -np.inf)[upper].astype(np.float32))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def count_impostor_pairs(labels: NDArray[np.int64]) -> int:
    n = labels.size
    per_identity = np.bincount(labels)
    return n * (n - 1) // 2 - int(np.sum(per_identity * (per_identity - 1) // 2))


def impostor_blocks(
    embeddings: FloatArray, labels: NDArray[np.int64]
) -> Iterator[tuple[int, FloatArray, NDArray[np.bool_]]]:
    """Row blocks of the upper triangle of E @ E.T: (first row, similarities, impostor mask).

    Memory stays at one block (rows x images), never n x n.
    """
    n = embeddings.shape[0]
    for start in range(0, n, CALIBRATION_BLOCK_ROWS):
        stop = min(start + CALIBRATION_BLOCK_ROWS, n)
        later = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
        impostor = labels[start:stop, None] != labels[None, start:]
        yield start, embeddings[start:stop] @ embeddings[start:].T, later & impostor


def impostor_tail(
    embeddings: FloatArray, labels: NDArray[np.int64], keep: int, count_from: float
) -> tuple[NDArray[np.float32], int, int]:
    """The ``keep`` highest different-identity similarities (descending), the number of
    such pairs, and how many score at least ``count_from``."""
    tail = np.empty(0, dtype=np.float32)
    total = above = 0
    for _, similarities, impostor in impostor_blocks(embeddings, labels):
        values = similarities[impostor]
        total += values.size
        above += int(np.count_nonzero(values >= count_from))
        tail = np.concatenate([tail, values])
        if tail.size > keep:
            tail = np.partition(tail, tail.size - keep)[tail.size - keep :]
    return np.sort(tail)[::-1], total, above


def impostor_pairs_from(
    embeddings: FloatArray, labels: NDArray[np.int64], floor: float
) -> list[tuple[int, int, float]]:
    """Every different-identity pair with similarity >= ``floor``, best first."""
    pairs = []
    for start, similarities, impostor in impostor_blocks(embeddings, labels):
        rows, columns = np.nonzero(impostor & (similarities >= floor))
        pairs += [
            (start + int(r), start + int(c), float(similarities[r, c]))
            for r, c in zip(rows, columns, strict=True)
        ]
    return sorted(pairs, key=lambda pair: -pair[2])


def calibrate(
    embeddings: FloatArray,
    found: NDArray[np.bool_],
    identities: Sequence[str],
    service_threshold: float,
    fars: Sequence[float] = CALIBRATION_FARS,
    top: int = 10,
) -> Calibration:
    """Thresholds at the given false-accept rates over all different-identity pairs of the
    images, with the true-accept rate over all same-identity pairs at each.

    ``embeddings`` are unit-norm rows (similarity = dot product); ``found`` says which
    images had a face. Images without one are left out of the impostor pairs (they
    cannot be falsely accepted) and reject every genuine pair they belong to. The
    ``top`` most similar impostor pairs are returned as indices into ``embeddings``.
    """
    genuine = genuine_scores(embeddings, found, identities)
    present = np.flatnonzero(found)
    _, inverse = np.unique([identities[int(i)] for i in present], return_inverse=True)
    labels = inverse.astype(np.int64)
    total = count_impostor_pairs(labels)
    if total == 0:
        raise ValueError("calibration needs faces of at least two identities")
    keep = max(1, math.ceil(max(fars) * total) + 1)
    tail, counted, above = impostor_tail(embeddings[present], labels, keep, service_threshold)
    assert counted == total, (counted, total)  # the closed form and the blocks agree

    def point(far_target: float | None, threshold: float, false_accepts: int) -> OperatingPoint:
        tar = float(np.mean(genuine >= threshold)) if genuine.size else math.nan
        return OperatingPoint(far_target, threshold, false_accepts, false_accepts / total, tar)

    points = []
    for far in fars:
        # Accepting similarity >= the next float above the (k+1)-th highest impostor
        # score lets at most k = floor(far * total) impostor pairs through.
        k = int(far * total)
        threshold = float(np.nextafter(tail[k], np.float32(np.inf)))
        points.append(point(far, threshold, int(np.count_nonzero(tail >= threshold))))
    return Calibration(
        images=int(present.size),
        impostor_pairs=total,
        genuine_pairs=int(genuine.size),
        genuine_pairs_missing_face=int(np.count_nonzero(np.isneginf(genuine))),
        points=points,
        service=point(None, service_threshold, above),
        top_impostors=[
            (int(present[i]), int(present[j]), value)
            for i, j, value in impostor_pairs_from(
                embeddings[present], labels, float(tail[min(top, tail.size) - 1])
            )[:top]
        ],
    )
