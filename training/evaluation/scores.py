"""Similarity scores of face pairs from unit-norm embeddings (similarity = dot product).

Similarity matrices are computed in row blocks, so memory stays at ``BLOCK_ROWS x n``
floats plus the scores kept, never ``n x n``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from training.evaluation.pairs import LfwPair

Embeddings = NDArray[np.float32]
Scores = NDArray[np.float32]
# Similarity of a listed pair when either photo has no detected face: below any
# threshold, so a same-identity pair is wrong (a different-identity pair is then right).
MISSING_SCORE = -1.0
# Rows of a similarity matrix computed at once.
BLOCK_ROWS = 1024


def identity_codes(identities: Sequence[str]) -> NDArray[np.int64]:
    """One integer per distinct identity (sorted names), per row."""
    _, codes = np.unique(np.asarray(identities, dtype=object), return_inverse=True)
    return codes.astype(np.int64).ravel()


def _upper_blocks(
    embeddings: Embeddings,
) -> Iterator[tuple[int, int, NDArray[np.float32], NDArray[np.bool_]]]:
    """(start, stop, rows start:stop against rows start:, mask of the pairs i < j)."""
    n = embeddings.shape[0]
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        similarities = embeddings[start:stop] @ embeddings[start:].T
        later = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
        yield start, stop, similarities, later


def all_pair_scores(embeddings: Embeddings, identities: Sequence[str]) -> tuple[Scores, Scores]:
    """(same-identity, different-identity) similarities of every unordered pair of rows."""
    labels = identity_codes(identities)
    genuine, impostor = [np.empty(0, np.float32)], [np.empty(0, np.float32)]
    for start, stop, similarities, later in _upper_blocks(embeddings):
        same = labels[start:stop, None] == labels[None, start:]
        genuine.append(similarities[later & same])
        impostor.append(similarities[later & ~same])
    return np.concatenate(genuine).astype(np.float32), np.concatenate(impostor).astype(np.float32)


def cross_pair_scores(
    first: Embeddings,
    first_ids: Sequence[str],
    second: Embeddings,
    second_ids: Sequence[str],
) -> tuple[Scores, Scores]:
    """(same, different) similarities of every pair (a, b), a from ``first``, b from ``second``."""
    codes = identity_codes([*first_ids, *second_ids])
    a, b = codes[: len(first_ids)], codes[len(first_ids) :]
    genuine, impostor = [np.empty(0, np.float32)], [np.empty(0, np.float32)]
    for start in range(0, first.shape[0], BLOCK_ROWS):
        similarities = first[start : start + BLOCK_ROWS] @ second.T
        same = a[start : start + BLOCK_ROWS, None] == b[None, :]
        genuine.append(similarities[same])
        impostor.append(similarities[~same])
    return np.concatenate(genuine).astype(np.float32), np.concatenate(impostor).astype(np.float32)


@dataclass(frozen=True, slots=True)
class GroupedPairs:
    """Every unordered pair of rows with the groups (folds) of its two sides."""

    similarity: Scores
    same: NDArray[np.bool_]  # same identity
    low_group: NDArray[np.int16]  # the smaller group number of the two rows
    high_group: NDArray[np.int16]

    def within(self, group: int) -> NDArray[np.bool_]:
        """Pairs with both rows in ``group``."""
        inside: NDArray[np.bool_] = (self.low_group == group) & (self.high_group == group)
        return inside

    def outside(self, group: int) -> NDArray[np.bool_]:
        """Pairs with neither row in ``group``."""
        away: NDArray[np.bool_] = (self.low_group != group) & (self.high_group != group)
        return away


def grouped_pair_scores(
    embeddings: Embeddings, identities: Sequence[str], groups: NDArray[np.int64]
) -> GroupedPairs:
    """All unordered pairs of rows, each with its similarity, kind and the groups of its rows."""
    labels = identity_codes(identities)
    group = groups.astype(np.int16)
    parts: list[tuple[Scores, NDArray[np.bool_], NDArray[np.int16], NDArray[np.int16]]] = []
    for start, stop, similarities, later in _upper_blocks(embeddings):
        row_groups, column_groups = group[start:stop, None], group[None, start:]
        parts.append(
            (
                similarities[later].astype(np.float32),
                (labels[start:stop, None] == labels[None, start:])[later],
                np.minimum(row_groups, column_groups)[later],
                np.maximum(row_groups, column_groups)[later],
            )
        )
    if not parts:
        empty = np.empty(0, np.int16)
        return GroupedPairs(np.empty(0, np.float32), np.empty(0, bool), empty, empty)
    return GroupedPairs(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def top_impostor_pairs(
    embeddings: Embeddings, identities: Sequence[str], count: int
) -> list[tuple[int, int, float]]:
    """The ``count`` most similar different-identity pairs (row, row, similarity), best first
    (ties by row)."""
    labels = identity_codes(identities)
    best: list[tuple[int, int, float]] = []
    for start, stop, similarities, later in _upper_blocks(embeddings):
        impostor = later & (labels[start:stop, None] != labels[None, start:])
        values = np.where(impostor, similarities, -np.inf).ravel()
        keep = min(count, int(np.count_nonzero(impostor)))
        if keep == 0:
            continue
        top = np.argpartition(values, values.size - keep)[values.size - keep :]
        width = similarities.shape[1]
        best += [(start + int(i // width), start + int(i % width), float(values[i])) for i in top]
        best = sorted(best, key=lambda pair: (-pair[2], pair[0], pair[1]))[:count]
    return best


def lfw_pair_scores(
    pairs: Sequence[LfwPair], embeddings: Mapping[str, NDArray[np.float32]]
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.bool_]]:
    """(scores, same, folds, missing) of listed pairs; a photo absent from ``embeddings``
    had no face, and its pairs score ``MISSING_SCORE``."""
    missing = np.array([p.first not in embeddings or p.second not in embeddings for p in pairs])
    scores = np.array(
        [
            MISSING_SCORE if gone else float(embeddings[p.first] @ embeddings[p.second])
            for p, gone in zip(pairs, missing, strict=True)
        ],
        dtype=np.float64,
    )
    same = np.array([p.same for p in pairs], dtype=np.bool_)
    folds = np.array([p.fold for p in pairs], dtype=np.int64)
    return scores, same, folds, missing.astype(np.bool_)
