"""Verification numerics against cases worked out by hand (in the comments) and against
distributions whose quantiles are known."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from training.evaluation import (
    allowed_false_accepts,
    best_accuracy_threshold,
    calibrate_threshold,
    far_key,
    operating_point,
    point_at,
    roc_curve,
    ten_fold_accuracy,
    verify,
)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def just_above(value: float) -> float:
    """The next float32 after ``value``: the threshold that rejects a score of ``value``."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


# --- FAR calibration ---------------------------------------------------------------------

# Ten impostor scores 0.9, 0.8, ..., 0.0.
TEN = f32(0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)


@pytest.mark.parametrize(
    ("far", "expected"),
    [
        # floor(0.05 x 10) = 0 false accepts allowed: reject even the highest, 0.9.
        (0.05, just_above(0.9)),
        # floor(0.1 x 10) = 1: accept 0.9 only, so reject from the 2nd highest (0.8) down.
        (0.1, just_above(0.8)),
        # floor(0.25 x 10) = 2: accept 0.9 and 0.8; the 3rd highest (0.7) is rejected.
        (0.25, just_above(0.7)),
        # floor(0.99 x 10) = 9: everything but the lowest score, 0.0.
        (0.99, just_above(0.0)),
    ],
)
def test_calibrated_threshold_of_ten_scores(far: float, expected: float) -> None:
    assert calibrate_threshold(TEN, far) == expected


def test_ties_at_the_threshold_are_all_rejected() -> None:
    # floor(0.4 x 5) = 2 allowed; the 3rd highest is 0.5, tied with the 2nd and 4th: accepting
    # any 0.5 accepts all three (4 pairs > 2), so only 0.9 is accepted.
    scores = f32(0.9, 0.5, 0.5, 0.5, 0.1)
    threshold = calibrate_threshold(scores, 0.4)
    assert threshold == just_above(0.5)
    assert np.count_nonzero(scores >= threshold) == 1


def test_allowed_false_accepts_is_not_fooled_by_floating_point() -> None:
    # 0.29 * 100 == 28.999999999999996 in binary floating point; 29 pairs are allowed.
    assert allowed_false_accepts(0.29, 100) == 29
    assert allowed_false_accepts(1e-5, 29_640_749) == 296
    assert allowed_false_accepts(1e-3, 999) == 0


def test_calibration_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold(np.zeros(0, np.float32), 1e-3)
    with pytest.raises(ValueError, match="far must be"):
        calibrate_threshold(np.zeros(10, np.float32), 0.0)
    with pytest.raises(ValueError, match="far must be"):
        calibrate_threshold(np.zeros(10, np.float32), 1.0)


@pytest.mark.parametrize("far", [1e-2, 1e-3, 1e-4])
def test_calibrated_threshold_is_the_gaussian_quantile(far: float) -> None:
    # 2M draws of N(0, 1): the empirical (1 - far) quantile has a standard error of
    # sqrt(far (1 - far) / n) / pdf(q): 0.0011 at 1e-2, 0.0022 at 1e-3, 0.0058 at 1e-4.
    scores = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
    expected = NormalDist().inv_cdf(1 - far)
    assert calibrate_threshold(scores, far) == pytest.approx(expected, abs=0.03)


def test_calibrated_threshold_is_the_uniform_quantile() -> None:
    # U(0, 1), 1M draws: the 1 - 1e-3 quantile is 0.999; 1,000 scores above it +- 32
    # (binomial), i.e. +- 3.2e-5 in score.
    scores = np.random.default_rng(1).uniform(0, 1, 1_000_000).astype(np.float32)
    assert calibrate_threshold(scores, 1e-3) == pytest.approx(0.999, abs=2e-4)


def test_calibrated_threshold_is_the_lowest_that_meets_the_far() -> None:
    scores = np.random.default_rng(2).uniform(-1, 1, 10_000).astype(np.float32)
    threshold = calibrate_threshold(scores, 1e-3)
    assert np.count_nonzero(scores >= threshold) <= 10
    below = np.nextafter(np.float32(threshold), np.float32(-np.inf))
    assert np.count_nonzero(scores >= below) > 10


# --- operating points, TAR at FAR ------------------------------------------------------------


def test_point_at_a_given_threshold() -> None:
    # Threshold 0.5: impostors 0.7 accepted (1 of 4: FAR 0.25); genuine 0.9 and 0.6
    # accepted, 0.3 and a pair without a face (-inf) rejected: TAR 2 / 4.
    genuine, impostor = f32(0.9, 0.6, 0.3, -np.inf), f32(0.7, 0.2, 0.1, 0.0)
    point = point_at(genuine, impostor, 0.5)
    assert (point.false_accepts, point.far, point.tar) == (1, 0.25, 0.5)
    assert point.far_target is None
    assert point.label == "threshold 0.5000"


def test_tar_at_far_on_a_hundred_impostors() -> None:
    # Impostors 0.00, 0.01, ..., 0.99; FAR 1e-2 allows 1: only 0.99 passes, the threshold
    # is just above 0.98. Genuine 0.995 and 0.985 pass it, 0.5 does not: TAR 2/3.
    impostor = (np.arange(100) / 100).astype(np.float32)
    point = operating_point(f32(0.995, 0.985, 0.5), impostor, 1e-2)
    assert point.threshold == just_above(0.98)
    assert (point.false_accepts, point.far) == (1, 0.01)
    assert point.tar == pytest.approx(2 / 3)
    assert point.label == "1e-2"


def test_tar_at_far_of_two_gaussians_is_the_known_value() -> None:
    # Impostors N(0, 0.1), genuine N(0.5, 0.1). Threshold at FAR 1e-3: 0.1 x z(0.999) =
    # 0.309; TAR = P(N(0.5, 0.1) >= 0.309) = Phi((0.5 - 0.309) / 0.1) = 0.9719.
    rng = np.random.default_rng(3)
    impostor = rng.normal(0.0, 0.1, 1_000_000).astype(np.float32)
    genuine = rng.normal(0.5, 0.1, 100_000).astype(np.float32)
    threshold = 0.1 * NormalDist().inv_cdf(1 - 1e-3)
    point = operating_point(genuine, impostor, 1e-3)
    assert point.threshold == pytest.approx(threshold, abs=0.005)
    assert point.tar == pytest.approx(NormalDist(0.5, 0.1).cdf(2 * 0.5 - threshold), abs=0.003)
    assert point.far <= 1e-3


# --- ROC ------------------------------------------------------------------------------------


def test_roc_points_and_auc_by_hand() -> None:
    # Scores, highest first: 0.9 G, 0.8 I, 0.7 G, 0.1 I. Accepting from each score down:
    # (FAR, TAR) = (0, 0) at +inf, (0, .5), (.5, .5), (.5, 1), (1, 1). Trapezoids: 0.25 + 0.5
    # = 0.75 = P(genuine > impostor) over the 4 (genuine, impostor) pairs (3 of 4 ordered).
    far, tar, thresholds = roc_curve(f32(0.9, 0.7), f32(0.8, 0.1))
    np.testing.assert_array_equal(far, f32(0, 0, 0.5, 0.5, 1))
    np.testing.assert_array_equal(tar, f32(0, 0.5, 0.5, 1, 1))
    np.testing.assert_array_equal(thresholds, f32(np.inf, 0.9, 0.8, 0.7, 0.1))
    assert verify(f32(0.9, 0.7), f32(0.8, 0.1), fars=(0.5,)).auc == pytest.approx(0.75)


def test_roc_of_tied_scores_is_one_point_and_auc_one_half() -> None:
    # A genuine and an impostor pair at 0.5: one threshold takes both at once.
    far, tar, _ = roc_curve(f32(0.5), f32(0.5))
    np.testing.assert_array_equal(far, f32(0, 1))
    np.testing.assert_array_equal(tar, f32(0, 1))
    assert verify(f32(0.5), f32(0.5), fars=(0.5,)).auc == pytest.approx(0.5)


def test_random_scores_have_auc_one_half_and_separable_scores_one() -> None:
    rng = np.random.default_rng(4)
    chance = verify(rng.random(20_000).astype(np.float32), rng.random(20_000).astype(np.float32))
    assert chance.auc == pytest.approx(0.5, abs=0.01)
    separable = verify(f32(0.9, 0.8, 0.7), f32(0.1, 0.2, 0.3, 0.3))
    assert separable.auc == pytest.approx(1.0)
    assert separable.tar(1e-2) == 1.0


def test_verification_summary_keys_are_far_keys() -> None:
    result = verify(f32(0.9, 0.8), np.linspace(0, 0.5, 1000, dtype=np.float32))
    summary = result.summary()
    assert set(summary["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
    assert summary["genuine_pairs"] == 2
    assert summary["impostor_pairs"] == 1000


def test_far_keys_match_the_manifest_convention() -> None:
    assert [far_key(f) for f in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)] == [
        "1e-2",
        "1e-3",
        "1e-4",
        "1e-5",
        "1e-6",
    ]
    assert far_key(2.5e-3) == "2.5e-3"
    assert far_key(0.5) == "5e-1"


# --- 10-fold accuracy ------------------------------------------------------------------------


def test_best_accuracy_threshold_by_hand() -> None:
    # Scores 0.1 F, 0.4 F, 0.35 T, 0.8 T. Correct pairs when accepting >= each score:
    # 0.1: 2 (both T); 0.35: 3 (0.1 rejected, 0.35 and 0.8 accepted, 0.4 wrongly);
    # 0.4: 2; 0.8: 3. Tie between 0.35 and 0.8: the lowest, 0.35.
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    same = np.array([False, False, True, True])
    assert best_accuracy_threshold(scores, same) == 0.35


def test_ten_fold_accuracy_by_hand_on_two_folds() -> None:
    # Fold 0: 0.9 T, 0.2 F, 0.6 T, 0.5 F. Fold 1: 0.8 T, 0.3 F, 0.4 T, 0.7 F.
    # Testing fold 0 with fold 1's best threshold: fold 1 is right 3 times at 0.4 and at
    # 0.8 -> 0.4; on fold 0, 0.5 F is accepted wrongly: 3/4.
    # Testing fold 1 with fold 0's: fold 0 is all right at 0.6; on fold 1, 0.4 T is
    # rejected and 0.7 F accepted: 2/4. Mean 0.625, population std 0.125.
    scores = np.array([0.9, 0.2, 0.6, 0.5, 0.8, 0.3, 0.4, 0.7])
    same = np.array([True, False, True, False, True, False, True, False])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = ten_fold_accuracy(scores, same, folds)
    assert result.accuracies == [0.75, 0.5]
    assert result.thresholds == [0.4, 0.6]
    assert result.mean == pytest.approx(0.625)
    assert result.std == pytest.approx(0.125)


def test_ten_fold_accuracy_of_separable_folds_is_perfect_and_needs_two_folds() -> None:
    # Every same pair scores 0.8, every different pair 0.2: on any 9 folds, accepting from
    # 0.2 is right half the time, from 0.8 always; 0.8 then classifies the 10th perfectly.
    same = np.tile([True, False], 300)
    scores = np.where(same, 0.8, 0.2)
    folds = np.repeat(np.arange(10), 60)
    result = ten_fold_accuracy(scores, same, folds)
    assert result.mean == 1.0
    assert result.std == 0.0
    assert result.thresholds == [0.8] * 10
    with pytest.raises(ValueError, match="at least 2 folds"):
        ten_fold_accuracy(scores, same, np.zeros(600, np.int64))
