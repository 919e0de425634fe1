"""Protocols over labelled embeddings: CFP, all pairs, LFW 10-fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluation import (
    cfp_protocol,
    headline_metric,
    lfw_accuracy,
    pairs_protocol,
    read_lfw_pairs,
    validation_protocol,
)


def cfp_like(people: int, basis: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    identities, poses, rows = [], [], []
    for person in range(people):
        for pose, count in (("frontal", 3), ("profile", 2)):
            for _ in range(count):
                identities.append(f"id{person}")
                poses.append(pose)
                rows.append(basis[person])
    return np.stack(rows), identities, poses


def test_cfp_protocol_on_perfect_embeddings_is_perfect() -> None:
    embeddings, identities, poses = cfp_like(6, np.eye(6, dtype=np.float32))
    result = cfp_protocol(embeddings, identities, poses)
    assert set(result.verification) == {"frontal_frontal", "frontal_profile"}
    # 6 people x 3 frontal x 2 profile same-identity pairs; 6 x 3 x (5 x 2) different.
    assert result.verification["frontal_profile"].genuine_pairs == 36
    assert result.verification["frontal_profile"].impostor_pairs == 180
    assert result.verification["frontal_frontal"].genuine_pairs == 6 * 3
    assert result.verification["frontal_profile"].tar(1e-3) == 1.0
    assert result.rank1["profile_to_frontal"] == 1.0
    assert headline_metric(result) == ("frontal_profile_tar@1e-3", 1.0)


def test_cfp_protocol_measures_a_profile_confusion() -> None:
    # Person 1's profiles look exactly like person 0: both profile probes of person 1 are
    # identified as person 0 (rank-1 10/12). They also make 2 x 3 impostor pairs with
    # person 0's frontals at similarity 1.0, as high as any genuine pair: FAR 1e-2 of 180
    # allows 1 false accept, so the threshold must reject 1.0, and every genuine pair.
    basis = np.eye(6, dtype=np.float32)
    embeddings, identities, poses = cfp_like(6, basis)
    embeddings[[8, 9]] = basis[0]
    result = cfp_protocol(embeddings, identities, poses)
    assert result.rank1["profile_to_frontal"] == pytest.approx(10 / 12)
    assert result.verification["frontal_profile"].tar(1e-2) == 0.0


def test_validation_protocol_picks_cfp_or_all_pairs() -> None:
    embeddings, identities, poses = cfp_like(4, np.eye(4, dtype=np.float32))
    assert "frontal_profile" in validation_protocol(embeddings, identities, poses).verification
    plain = validation_protocol(embeddings, identities, [None] * len(identities))
    assert set(plain.verification) == {"all_pairs"}
    assert pairs_protocol(embeddings, identities).rank1["leave_one_out"] == 1.0


def test_lfw_accuracy_scores_pairs_without_a_face_below_any_threshold(tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("2 1\nA\t1\t2\nB\t1\tC\t1\nD\t1\t2\nE\t1\tF\t1\n")
    pairs = read_lfw_pairs(pairs_file)
    x, y = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    embeddings = {
        "A/A_0001.jpg": x,
        "A/A_0002.jpg": x,
        "B/B_0001.jpg": y,
        "C/C_0001.jpg": x,
        "D/D_0001.jpg": x,
        "E/E_0001.jpg": x,
        "F/F_0001.jpg": y,
    }  # D_0002 had no face
    result = lfw_accuracy(pairs, embeddings)
    assert result["pairs_missing_face"] == 1
    # Fold 0 (A same 1.0, B-C different 0.0) gives threshold 1.0; on fold 1 the missing
    # same pair (-1) is rejected (wrong), E-F (0.0) rejected (right): 1/2. Fold 1 (-1 same,
    # 0.0 different) is best at -1 (1/2 right either way, lowest); on fold 0 A (1.0) is
    # accepted (right), B-C (0.0) accepted (wrong): 1/2.
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["mean_threshold"] == pytest.approx(0.0)
