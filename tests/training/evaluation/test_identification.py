"""Rank-1 identification against hand-made galleries."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import rank1


def test_rank1_by_hand() -> None:
    gallery = np.array([[1, 0], [0, 1]], np.float32)  # a, b
    # (0.9, 0.1) is nearest a: right. (0.2, 0.8) is nearest b but labelled a: wrong.
    probes = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]], np.float32)
    assert rank1(gallery, ["a", "b"], probes, ["a", "a", "b"]) == pytest.approx(2 / 3)


def test_leave_one_out_never_matches_a_probe_with_itself() -> None:
    embeddings = np.eye(3, dtype=np.float32)
    ids = ["a", "b", "c"]
    assert rank1(embeddings, ids, embeddings, ids) == 1.0
    # Without itself, each row's best is another identity (all similarities 0).
    assert rank1(embeddings, ids, embeddings, ids, leave_one_out=True) == 0.0
    twins = np.eye(2, dtype=np.float32)[[0, 0, 1, 1]]
    assert rank1(twins, list("aabb"), twins, list("aabb"), leave_one_out=True) == 1.0


def test_rank1_needs_probes() -> None:
    with pytest.raises(ValueError, match="at least one probe"):
        rank1(np.eye(2, dtype=np.float32), ["a", "b"], np.zeros((0, 2), np.float32), [])
