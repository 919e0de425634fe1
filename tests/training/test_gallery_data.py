"""training.gallery_data: outlier rejection, selection and the three-way split on
hand-made embeddings (the real-gallery path is tests/training/test_gallery_finetune.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training.from_gallery import redact
from training.gallery_data import (
    GalleryFaces,
    face_set,
    find_outliers,
    select_rows,
    three_way_split,
)


def clustered(subjects: int, per_subject: int, noise: float, seed: int = 0) -> np.ndarray:
    """Unit vectors: each subject a random direction plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(subjects, 64))
    rows = np.repeat(centres, per_subject, axis=0) + noise * rng.normal(
        size=(subjects * per_subject, 64)
    )
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_find_outliers_flags_a_face_of_another_subject_filed_under_the_wrong_name() -> None:
    vectors = clustered(8, 6, noise=0.6)
    subjects = [f"s{i // 6}" for i in range(48)]
    face_ids = [f"f{i}" for i in range(48)]
    subjects[5] = "s3"  # s0's last face enrolled as s3's: a poisoned enrolment
    scan = find_outliers(vectors, subjects, face_ids, far=1e-3)
    assert scan.rows == (5,)
    (outlier,) = scan.outliers
    assert (outlier.face_id, outlier.subject, outlier.closest_subject) == ("f5", "s3", "s0")
    assert outlier.similarity < scan.threshold < outlier.closest_similarity
    assert scan.impostor_scores == 48 * 6  # closest stranger of each face left out


def test_find_outliers_leaves_single_face_subjects_and_clean_subjects_alone() -> None:
    vectors = clustered(5, 4, noise=0.3)
    subjects = [f"s{i // 4}" for i in range(20)] + ["lonely"]
    vectors = np.vstack([vectors, clustered(1, 1, 0.0, seed=9)])
    scan = find_outliers(vectors, subjects, [str(i) for i in range(21)], far=1e-2)
    assert scan.rows == ()


def test_find_outliers_refuses_too_few_subjects_and_a_bad_far() -> None:
    vectors = clustered(1, 3, 0.1)
    with pytest.raises(ValueError, match="at least 3 subjects"):
        find_outliers(vectors, ["a", "b", "b"], ["1", "2", "3"], far=1e-3)
    with pytest.raises(ValueError, match="FAR"):
        find_outliers(vectors, ["a", "b", "c"], ["1", "2", "3"], far=0)


def test_select_rows_drops_small_subjects_and_caps_large_ones_deterministically() -> None:
    subjects = ["a"] * 10 + ["b"] * 3 + ["c"] * 5
    rows, dropped = select_rows(subjects, excluded=[13], min_faces=4, max_faces=6, seed=0)
    assert dropped == {"subjects_too_few_faces": 1, "faces_over_cap": 4}
    assert [subjects[r] for r in rows].count("a") == 6
    assert [r for r in rows if subjects[r] == "c"] == [14, 15, 16, 17]  # 13 excluded
    assert rows == sorted(rows)
    again, _ = select_rows(subjects, excluded=[13], min_faces=4, max_faces=6, seed=0)
    assert again == rows


def test_three_way_split_is_disjoint_complete_and_seeded() -> None:
    names = [f"id{i:02d}" for i in range(40)]
    train, selection, held = three_way_split(names, held_out=10, selection=0.25, seed=3)
    assert (len(held), len(selection), len(train)) == (10, 8, 22)
    assert sorted(train + selection + held) == names
    assert three_way_split(names, held_out=10, selection=0.25, seed=3) == (train, selection, held)
    assert three_way_split(names, held_out=10, selection=0.25, seed=4)[2] != held


def test_face_set_encodes_subject_names_so_they_cannot_fake_a_pose() -> None:
    faces = GalleryFaces(
        crops=np.zeros((2, 112, 112, 3), np.uint8),
        embeddings=np.zeros((2, 4), np.float32),
        subjects=("x/frontal", "y"),
        face_ids=("f1", "f2"),
        image_sha256=("h1", "h2"),
        without_crop=0,
    )
    labelled = face_set(faces, [0, 1], {"h2": "profile"})
    assert labelled.identities == ("x/frontal", "y")
    assert labelled.poses() == [None, "profile"]


def test_redact_drops_a_database_password() -> None:
    assert redact("postgresql://app:s3cret@db:5432/facerec") == "postgresql://app@db:5432/facerec"
    assert redact("/srv/gallery") == "/srv/gallery"
