"""FAR calibration, in-sample and held out by identity folds: hand-worked cases (in the
comments) and random embeddings whose impostor similarity distribution is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from training.evaluation import (
    CALIBRATION_FARS,
    all_pair_scores,
    calibrate,
    calibrate_threshold,
    identity_folds,
    manifest_thresholds,
    round_up,
)


def just_above(value: float) -> float:
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def rows(*vectors: tuple[float, ...]) -> np.ndarray:
    return np.array(vectors, dtype=np.float32)


# Five photos: A twice (identical), one photo of A without a face, B and C once.
# Similarities of the rows with a face: a1.a2 = 1 (genuine); a.b = 0.6 (two impostor
# pairs), a.c = b.c = 0 (three impostor pairs): impostors 0.6, 0.6, 0, 0, 0.
SMALL_EMBEDDINGS = rows(
    (1, 0, 0),  # a1
    (0, 0, 0),  # a3: no face (the row is never used)
    (1, 0, 0),  # a2
    (0.6, 0.8, 0),  # b1
    (0, 0, 1),  # c1
)
SMALL_IDENTITIES = ["A", "A", "A", "B", "C"]
SMALL_FOUND = np.array([True, False, True, True, True])


def small_calibration(fars: tuple[float, ...]):  # type: ignore[no-untyped-def]
    return calibrate(
        SMALL_EMBEDDINGS,
        SMALL_FOUND,
        SMALL_IDENTITIES,
        fars=fars,
        folds=None,  # 3 identities: 2 folds would leave one with a single identity
        fixed_thresholds=(0.5,),
        top=2,
    )


def test_in_sample_calibration_by_hand() -> None:
    calibration = small_calibration((0.2, 0.4))
    assert (calibration.held_out, calibration.folds) == ([], 0)
    # A has 3 photos, 2 with a face: 3 same-identity pairs, 2 of them missing a face.
    assert (calibration.images, calibration.images_without_face) == (4, 1)
    assert (calibration.genuine_pairs, calibration.genuine_pairs_missing_face) == (3, 2)
    assert (calibration.impostor_pairs, calibration.identities) == (5, 3)
    # FAR 0.2 allows floor(0.2 x 5) = 1 false accept; the 2nd highest impostor is 0.6, tied
    # with the 1st: both are rejected (0 false accepts). TAR: a1.a2 = 1 accepted, the two
    # pairs without a face not: 1/3.
    strict = calibration.point(0.2)
    assert strict.threshold == just_above(0.6)
    assert (strict.false_accepts, strict.far) == (0, 0.0)
    assert strict.tar == pytest.approx(1 / 3)
    # FAR 0.4 allows 2: the 3rd highest is 0, so both 0.6 pairs pass (FAR 2/5 = 0.4).
    loose = calibration.point(0.4)
    assert loose.threshold == just_above(0.0)
    assert (loose.false_accepts, loose.far) == (2, 0.4)
    # A fixed threshold, 0.5: the two 0.6 impostors pass; TAR again 1/3.
    (fixed,) = calibration.fixed
    assert (fixed.threshold, fixed.false_accepts, fixed.far) == (0.5, 2, 0.4)
    # The most similar impostor pairs, as rows of the input (row 1 had no face).
    assert calibration.top_impostors == [(0, 3, pytest.approx(0.6)), (2, 3, pytest.approx(0.6))]


# Four identities in two folds: A, B in fold 0; C, D in fold 1. Pairs within fold 0: a1.a2
# = 1 (genuine), a1.b1 = a2.b1 = 0.6. Within fold 1: c1.c2 = 0.8 (genuine), c1.d1 = 0,
# c2.d1 = 0.6. Across the folds every similarity is 0 (9 pairs, used only in-sample).
FOLD_EMBEDDINGS = rows(
    (1, 0, 0, 0),  # a1
    (1, 0, 0, 0),  # a2
    (0.6, 0.8, 0, 0),  # b1
    (0, 0, 1, 0),  # c1
    (0, 0, 0.8, 0.6),  # c2
    (0, 0, 0, 1),  # d1
)
FOLD_IDENTITIES = ["A", "A", "B", "C", "C", "D"]
FOLD_GROUPS = np.array([0, 0, 0, 1, 1, 1])


def test_held_out_calibration_by_hand() -> None:
    calibration = calibrate(
        FOLD_EMBEDDINGS,
        np.ones(6, bool),
        FOLD_IDENTITIES,
        fars=(0.5,),
        groups=FOLD_GROUPS,
    )
    # In-sample: 13 impostor pairs (0.6 three times, 0 ten times); FAR 0.5 allows 6; the 7th
    # highest is 0: the three 0.6 pairs pass (3/13), both genuine pairs too.
    point = calibration.point(0.5)
    assert calibration.impostor_pairs == 13
    assert (point.threshold, point.false_accepts, point.tar) == (just_above(0.0), 3, 1.0)
    # Held out, fold 0 tested: chosen on fold 1's impostors (0, 0.6): 1 allowed, 2nd
    # highest 0 -> just above 0; on fold 0 both impostors (0.6, 0.6) pass: FAR 2/2, and
    # a1.a2 passes. Fold 1 tested: chosen on fold 0's (0.6, 0.6): 1 allowed but tied ->
    # just above 0.6; on fold 1 neither 0 nor 0.6 passes (FAR 0/2), c1.c2 = 0.8 passes.
    (held_out,) = calibration.held_out
    assert held_out.thresholds == [just_above(0.0), just_above(0.6)]
    assert held_out.false_accepts == [2, 0]
    assert held_out.impostor_pairs == [2, 2]
    assert held_out.fold_fars == [1.0, 0.0]
    assert held_out.far == 0.5  # pooled: 2 of 4
    assert (held_out.true_accepts, held_out.genuine_pairs, held_out.tar) == ([1, 1], [1, 1], 1.0)


def test_held_out_pairs_missing_a_face_count_as_rejected_in_their_fold() -> None:
    embeddings = np.vstack([FOLD_EMBEDDINGS, rows((0, 0, 0, 0))])
    found = np.r_[np.ones(6, bool), False]
    # A 7th photo of C without a face: C now has 3 same-identity pairs, 2 missing a face.
    calibration = calibrate(
        embeddings, found, [*FOLD_IDENTITIES, "C"], fars=(0.5,), groups=np.r_[FOLD_GROUPS, 1]
    )
    (held_out,) = calibration.held_out
    assert held_out.genuine_pairs == [1, 3]
    assert held_out.true_accepts == [1, 1]
    assert calibration.point(0.5).tar == pytest.approx(2 / 4)


def test_calibration_refuses_groups_that_split_an_identity_or_one_identity() -> None:
    with pytest.raises(ValueError, match="two folds"):
        calibrate(
            FOLD_EMBEDDINGS,
            np.ones(6, bool),
            FOLD_IDENTITIES,
            groups=np.array([0, 1, 0, 1, 1, 1]),
        )
    with pytest.raises(ValueError, match="no different-identity pairs outside"):
        calibrate(SMALL_EMBEDDINGS, SMALL_FOUND, SMALL_IDENTITIES, groups=np.array([0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="at least two identities"):
        calibrate(FOLD_EMBEDDINGS[:2], np.ones(2, bool), ["A", "A"])


def test_identity_folds_are_stable_per_name_and_about_even() -> None:
    names = [f"person_{i}" for i in range(2000)]
    folds = identity_folds(names, 2)
    # The same name gets the same fold whatever else is listed, and in any order.
    assert identity_folds(names[::-1], 2).tolist() == folds[::-1].tolist()
    assert identity_folds(names[:10], 2).tolist() == folds[:10].tolist()
    # Binomial(2000, 1/2): 1000 +- 22 per fold; +-110 is five standard deviations.
    assert abs(int(np.count_nonzero(folds == 0)) - 1000) < 110
    with pytest.raises(ValueError, match="at least 2 folds"):
        identity_folds(names, 1)


def random_unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_calibration_of_random_embeddings_lands_on_the_known_quantiles() -> None:
    # The cosine t of two independent uniform unit vectors in d dimensions has
    # (1 + t) / 2 ~ Beta((d - 1) / 2, (d - 1) / 2). 3,000 identities of one photo each in 32
    # dimensions: 4,498,500 impostor pairs, so the threshold at FAR f is that distribution's
    # 1 - f quantile, and a threshold chosen on one identity fold holds its FAR on the other.
    count, dim = 3000, 32
    embeddings = random_unit_rows(count, dim, seed=0)
    identities = [f"id{i}" for i in range(count)]
    calibration = calibrate(embeddings, np.ones(count, bool), identities, fars=(1e-2, 1e-3, 1e-4))
    shape = (dim - 1) / 2
    assert calibration.impostor_pairs == count * (count - 1) // 2
    for point, held_out in zip(calibration.in_sample, calibration.held_out, strict=True):
        assert point.far_target is not None
        expected = 2 * stats.beta.ppf(1 - point.far_target, shape, shape) - 1
        assert point.threshold == pytest.approx(expected, abs=0.01)
        assert point.far <= point.far_target
        # Held out: each fold's ~1.1M test pairs expect far x 1.1M false accepts (1,100 at
        # 1e-3, sd ~33 if independent; pairs sharing a row are not, so allow 30%).
        assert held_out.far == pytest.approx(point.far_target, rel=0.3)
        assert all(t == pytest.approx(expected, abs=0.015) for t in held_out.thresholds)


def test_by_far_holds_resolvable_fars_rounded_up() -> None:
    embeddings = random_unit_rows(3000, 32, seed=1)
    calibration = calibrate(embeddings, np.ones(3000, bool), [f"id{i}" for i in range(3000)])
    assert [p.far_target for p in calibration.in_sample] == list(CALIBRATION_FARS)
    by_far = calibration.by_far()
    # 4,498,500 pairs: 1e-5 allows 44 false accepts, 1e-6 only 4 (< 10: not shipped).
    assert set(by_far) == {"1e-2", "1e-3", "1e-4", "1e-5"}
    for point in calibration.in_sample[:4]:
        key = f"{point.far_target:.0e}".replace("e-0", "e-")
        assert point.threshold <= by_far[key] < point.threshold + 1e-4
    assert calibration.resolvable(1e-6)
    assert not calibration.resolvable(1e-7)


def test_round_up_never_lowers_a_threshold() -> None:
    assert round_up(0.35561) == 0.3557
    assert round_up(0.3556) == 0.3556
    assert round_up(-0.12345) == -0.1234
    # A float32 threshold just above 0.3556 must not round down to it.
    assert round_up(float(np.nextafter(np.float32(0.3556), np.float32(1)))) == 0.3557


# --- a training run's manifest thresholds ------------------------------------------------


def test_manifest_thresholds_use_the_calibrated_similarity() -> None:
    rng = np.random.default_rng(6)
    impostor = rng.normal(0.0, 0.1, 200_000).astype(np.float32)
    genuine = rng.normal(0.6, 0.1, 1_000).astype(np.float32)
    thresholds = manifest_thresholds(genuine, impostor, 1e-4, described_as="test pairs")
    assert thresholds["far"] == 1e-4
    assert thresholds["match"] == pytest.approx(calibrate_threshold(impostor, 1e-4), abs=1e-6)
    # 200,000 pairs: 1e-4 allows 20 false accepts, 1e-5 only 2 (< 10: left out).
    assert set(thresholds["by_far"]) == {"1e-2", "1e-3", "1e-4"}
    assert "200,000 different-identity pairs among test pairs" in thresholds["calibration"]


def test_manifest_thresholds_fall_back_to_a_measurable_far() -> None:
    # 500 pairs cannot measure 1e-4 (0 false accepts allowed); 1e-2 allows 5.
    impostor = np.linspace(-0.5, 0.5, 500, dtype=np.float32)
    thresholds = manifest_thresholds(np.ones(5, np.float32), impostor, 1e-4, described_as="x")
    assert thresholds["far"] == 1e-2
    assert "1e-4 was asked for" in thresholds["calibration"].replace("0.0001", "1e-4")
    with pytest.raises(ValueError, match="cannot calibrate"):
        manifest_thresholds(np.ones(5, np.float32), impostor[:50], 1e-4, described_as="x")


def test_all_pair_scores_feed_the_same_calibration() -> None:
    embeddings = random_unit_rows(300, 16, seed=2)
    identities = [f"id{i // 3}" for i in range(300)]
    genuine, impostor = all_pair_scores(embeddings, identities)
    calibration = calibrate(embeddings, np.ones(300, bool), identities, fars=(1e-2,))
    assert calibration.point(1e-2).threshold == calibrate_threshold(impostor, 1e-2)
    assert calibration.genuine_pairs == genuine.size == 100 * 3
