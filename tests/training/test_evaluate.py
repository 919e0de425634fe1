"""Evaluation numerics: calibration, ROC, TAR at FAR, 10-fold accuracy, protocols, plots."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from training.evaluate import (
    all_pair_scores,
    calibrate_threshold,
    cfp_protocol,
    cross_pair_scores,
    far_key,
    lfw_accuracy,
    manifest_thresholds,
    operating_point,
    pairs_protocol,
    plot_roc,
    rank1,
    read_lfw_pairs,
    roc_curve,
    ten_fold_accuracy,
    verify,
)


def unit_rows(rng: np.random.Generator, count: int, dim: int = 16) -> np.ndarray:
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("far", [1e-2, 1e-3, 1e-4])
def test_calibrated_threshold_matches_the_gaussian_quantile(far):
    scores = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
    expected = NormalDist().inv_cdf(1 - far)
    # The empirical quantile of 2M samples: about +-0.01 at 1e-3, +-0.03 at 1e-4.
    assert calibrate_threshold(scores, far) == pytest.approx(expected, abs=0.04)


def test_calibrated_threshold_accepts_at_most_far_and_is_the_lowest_such():
    scores = np.random.default_rng(1).uniform(-1, 1, 10_000).astype(np.float32)
    threshold = calibrate_threshold(scores, 1e-3)
    assert np.count_nonzero(scores >= threshold) <= 10
    below = np.nextafter(np.float32(threshold), np.float32(-np.inf))
    assert np.count_nonzero(scores >= below) > 10


def test_ties_at_the_threshold_are_all_rejected():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1], dtype=np.float32)
    threshold = calibrate_threshold(scores, 0.2)  # one false accept allowed
    assert np.count_nonzero(scores >= threshold) == 1


def test_calibration_refuses_nonsense():
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold(np.zeros(0, np.float32), 1e-3)
    with pytest.raises(ValueError, match="far must be"):
        calibrate_threshold(np.zeros(10, np.float32), 0.0)


def test_roc_runs_from_origin_to_one_and_separable_scores_have_auc_one():
    genuine = np.array([0.9, 0.8, 0.7], np.float32)
    impostor = np.array([0.1, 0.2, 0.3, 0.3], np.float32)
    far, tar, thresholds = roc_curve(genuine, impostor)
    assert (far[0], tar[0]) == (0.0, 0.0)
    assert (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0)
    assert np.all(np.diff(tar) >= 0)
    assert np.all(np.diff(thresholds[1:]) < 0)
    result = verify(genuine, impostor)
    assert result.auc == pytest.approx(1.0)
    assert result.tar(1e-2) == 1.0


def test_random_scores_have_auc_one_half():
    rng = np.random.default_rng(2)
    result = verify(rng.random(20_000).astype(np.float32), rng.random(20_000).astype(np.float32))
    assert result.auc == pytest.approx(0.5, abs=0.01)


def test_operating_point_reports_tar_at_the_calibrated_threshold():
    rng = np.random.default_rng(3)
    impostor = rng.normal(0.0, 0.1, 100_000).astype(np.float32)
    genuine = rng.normal(0.5, 0.1, 10_000).astype(np.float32)
    point = operating_point(genuine, impostor, 1e-3)
    assert point.far <= 1e-3
    assert point.tar == pytest.approx(np.mean(genuine >= point.threshold))
    expected_threshold = 0.1 * NormalDist().inv_cdf(1 - 1e-3)
    assert point.threshold == pytest.approx(expected_threshold, abs=0.01)


def test_ten_fold_accuracy_agrees_with_the_benchmark_implementation():
    bench_lfw = pytest.importorskip("bench.lfw")
    rng = np.random.default_rng(4)
    same = rng.random(600) < 0.5
    scores = np.where(same, rng.normal(0.6, 0.2, 600), rng.normal(0.1, 0.2, 600)).round(3)
    folds = np.repeat(np.arange(10), 60)
    assert ten_fold_accuracy(scores, same, folds) == bench_lfw.ten_fold_accuracy(
        scores, same, folds
    )


def test_lfw_pairs_file_parses_into_ten_balanced_folds(data_root: Path):
    pairs = read_lfw_pairs(data_root / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    assert sum(p.same for p in pairs) == 3000
    assert {p.fold for p in pairs} == set(range(10))
    assert pairs[0].first.count("/") == 1
    assert pairs[0].first.endswith(".jpg")


def test_lfw_accuracy_scores_pairs_without_a_face_below_any_threshold(tmp_path: Path):
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
    # Fold 1 learns 1.0 on fold 0 and rejects the missing same pair; fold 0 learns -1.
    assert result["accuracy"] == pytest.approx(0.5)


def test_all_pairs_and_cross_pairs_are_counted_exactly():
    rng = np.random.default_rng(5)
    embeddings = unit_rows(rng, 7)
    identities = ["a", "a", "a", "b", "b", "c", "c"]
    genuine, impostor = all_pair_scores(embeddings, identities)
    assert genuine.size == 3 + 1 + 1
    assert genuine.size + impostor.size == 7 * 6 // 2
    assert genuine[0] == pytest.approx(float(embeddings[0] @ embeddings[1]))
    genuine, impostor = cross_pair_scores(
        embeddings[:3], identities[:3], embeddings[3:], identities[3:]
    )
    assert (genuine.size, impostor.size) == (0, 12)


def test_cfp_protocol_on_perfect_embeddings_is_perfect():
    identities, poses, rows = [], [], []
    basis = np.eye(6, dtype=np.float32)
    for person in range(6):
        for pose, count in (("frontal", 3), ("profile", 2)):
            for _ in range(count):
                identities.append(f"id{person}")
                poses.append(pose)
                rows.append(basis[person])
    result = cfp_protocol(np.stack(rows), identities, poses)
    assert set(result.verification) == {"frontal_frontal", "frontal_profile"}
    assert result.verification["frontal_profile"].genuine_pairs == 6 * 3 * 2
    assert result.verification["frontal_profile"].tar(1e-3) == 1.0
    assert result.rank1["profile_to_frontal"] == 1.0
    summary = result.summary()
    assert summary["verification"]["frontal_frontal"]["tar_at_far"]["1e-3"] == 1.0


def test_rank1_leave_one_out_never_matches_a_probe_with_itself():
    embeddings = np.eye(3, dtype=np.float32)
    assert rank1(embeddings, ["a", "b", "c"], embeddings, ["a", "b", "c"]) == 1.0
    assert rank1(embeddings, ["a", "b", "c"], embeddings, ["a", "b", "c"], leave_one_out=True) < 1
    result = pairs_protocol(np.eye(4, dtype=np.float32)[[0, 0, 1, 1]], ["a", "a", "b", "b"])
    assert result.rank1["leave_one_out"] == 1.0


def test_manifest_thresholds_use_the_calibrated_similarity():
    rng = np.random.default_rng(6)
    impostor = rng.normal(0.0, 0.1, 200_000).astype(np.float32)
    genuine = rng.normal(0.6, 0.1, 1_000).astype(np.float32)
    thresholds = manifest_thresholds(genuine, impostor, 1e-4, described_as="test pairs")
    assert thresholds["far"] == 1e-4
    assert thresholds["match"] == pytest.approx(calibrate_threshold(impostor, 1e-4), abs=1e-6)
    assert set(thresholds["by_far"]) == {"1e-2", "1e-3", "1e-4"}  # 1e-5: only 2 pairs
    assert "200,000 different-identity pairs among test pairs" in thresholds["calibration"]


def test_manifest_thresholds_fall_back_to_a_measurable_far():
    impostor = np.linspace(-0.5, 0.5, 500, dtype=np.float32)
    thresholds = manifest_thresholds(np.ones(5, np.float32), impostor, 1e-4, described_as="x")
    assert thresholds["far"] == 1e-2
    assert "1e-4 was asked for" in thresholds["calibration"].replace("0.0001", "1e-4")
    with pytest.raises(ValueError, match="cannot calibrate"):
        manifest_thresholds(np.ones(5, np.float32), impostor[:50], 1e-4, described_as="x")


def test_far_keys_match_the_manifest_convention():
    assert [far_key(f) for f in (1e-2, 1e-3, 1e-4, 1e-5)] == ["1e-2", "1e-3", "1e-4", "1e-5"]


def test_roc_plot_is_written_as_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(7)
    result = verify(
        rng.normal(1, 1, 500).astype(np.float32), rng.normal(0, 1, 5000).astype(np.float32)
    )
    path = plot_roc({"model": result.curve}, tmp_path / "roc.png", "test")
    assert path.read_bytes().startswith(b"\x89PNG")
