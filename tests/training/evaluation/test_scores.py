"""Pair similarities from embeddings: exact counts, values, groups and blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.evaluation import (
    MISSING_SCORE,
    LfwPair,
    all_pair_scores,
    cross_pair_scores,
    grouped_pair_scores,
    lfw_pair_scores,
    top_impostor_pairs,
)
from training.evaluation import scores as scores_module


def unit_rows(count: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def brute_force(embeddings: np.ndarray, identities: list[str]) -> tuple[list[float], list[float]]:
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(identities)), 2):
        value = float(embeddings[i] @ embeddings[j])
        (genuine if identities[i] == identities[j] else impostor).append(value)
    return genuine, impostor


@pytest.fixture(params=[1024, 3], ids=["one block", "blocks of 3 rows"])
def block_rows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(scores_module, "BLOCK_ROWS", request.param)
    return int(request.param)


def test_all_pairs_match_brute_force(block_rows: int) -> None:
    embeddings = unit_rows(7)
    identities = ["a", "a", "a", "b", "b", "c", "c"]
    genuine, impostor = all_pair_scores(embeddings, identities)
    expected_genuine, expected_impostor = brute_force(embeddings, identities)
    # a: 3 pairs, b: 1, c: 1; 21 pairs in all.
    assert (genuine.size, impostor.size) == (5, 16)
    np.testing.assert_allclose(np.sort(genuine), np.sort(expected_genuine), atol=1e-6)
    np.testing.assert_allclose(np.sort(impostor), np.sort(expected_impostor), atol=1e-6)


def test_cross_pairs_count_every_pair_across_the_two_sets(block_rows: int) -> None:
    embeddings = unit_rows(7)
    identities = ["a", "a", "a", "b", "b", "c", "c"]
    genuine, impostor = cross_pair_scores(
        embeddings[:4], identities[:4], embeddings[4:], identities[4:]
    )
    # First a, a, a, b; second b, c, c: only (b, b) is the same identity; 4 x 3 = 12 pairs.
    assert (genuine.size, impostor.size) == (1, 11)
    assert genuine[0] == pytest.approx(float(embeddings[3] @ embeddings[4]), abs=1e-6)


def test_grouped_pairs_know_the_groups_of_both_sides(block_rows: int) -> None:
    embeddings = unit_rows(5)
    identities = ["a", "a", "b", "c", "c"]
    groups = np.array([0, 0, 1, 2, 2])
    pairs = grouped_pair_scores(embeddings, identities, groups)
    assert pairs.similarity.size == 10
    expected = {
        (i, j): (float(embeddings[i] @ embeddings[j]), identities[i] == identities[j])
        for i, j in itertools.combinations(range(5), 2)
    }
    got = sorted(zip(pairs.similarity.tolist(), pairs.same.tolist(), strict=True))
    want = sorted(expected.values())
    assert [same for _, same in got] == [same for _, same in want]
    assert [value for value, _ in got] == pytest.approx([value for value, _ in want], abs=1e-6)
    # Within group 0: the one pair (0, 1); within 2: (3, 4); outside 1: the 6 pairs of rows
    # 0, 1, 3, 4.
    assert int(np.count_nonzero(pairs.within(0))) == 1
    assert int(np.count_nonzero(pairs.within(1))) == 0
    assert int(np.count_nonzero(pairs.within(2))) == 1
    assert int(np.count_nonzero(pairs.outside(1))) == 6
    assert np.all(pairs.same[pairs.within(0) | pairs.within(2)])


def test_top_impostor_pairs_match_brute_force(block_rows: int) -> None:
    embeddings = unit_rows(12, seed=1)
    identities = [f"id{i // 2}" for i in range(12)]
    expected = sorted(
        (
            (float(embeddings[i] @ embeddings[j]), i, j)
            for i, j in itertools.combinations(range(12), 2)
            if identities[i] != identities[j]
        ),
        reverse=True,
    )[:4]
    got = top_impostor_pairs(embeddings, identities, 4)
    assert [(i, j) for i, j, _ in got] == [(i, j) for _, i, j in expected]
    assert [s for _, _, s in got] == pytest.approx([s for s, _, _ in expected], abs=1e-6)


def test_lfw_pair_scores_score_a_pair_without_a_face_as_missing() -> None:
    x, y = np.array([1.0, 0.0], np.float32), np.array([0.6, 0.8], np.float32)
    pairs = [
        LfwPair("A/A_0001.jpg", "A/A_0002.jpg", True, 0),
        LfwPair("A/A_0001.jpg", "B/B_0001.jpg", False, 1),
    ]
    scores, same, folds, missing = lfw_pair_scores(pairs, {"A/A_0001.jpg": x, "B/B_0001.jpg": y})
    assert scores.tolist() == [MISSING_SCORE, pytest.approx(0.6)]
    assert (same.tolist(), folds.tolist(), missing.tolist()) == (
        [True, False],
        [0, 1],
        [True, False],
    )
