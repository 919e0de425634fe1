"""Open-set threshold derivation against impostor distributions whose quantiles are known
analytically (exponential and Gaussian), measured from samples by the same tail code the
benchmark uses."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from app.core.openset import (
    ImpostorTail,
    TailPoint,
    derive_threshold,
    expected_fpir,
    per_comparison_far,
)
from training.evaluation.tail import TailAccumulator, exponential_scale, keep_for

EXPONENTIAL_RATE = 25.0  # P(S >= t) = exp(-25 t): the far=1e-6 quantile is 0.5526
GAUSSIAN_SIGMA = 0.06  # about an ArcFace impostor distribution's spread
SAMPLES = 2_000_000


def measured_tail(scores: np.ndarray, fit_far: float = 1e-4) -> ImpostorTail:
    accumulator = TailAccumulator(keep=keep_for(scores.size, 1e-2))
    for chunk in np.array_split(scores.astype(np.float32), 7):  # streamed, as the bench does
        accumulator.add(chunk)
    measured = accumulator.measure(fit_far=fit_far)
    points = tuple(TailPoint(q.far, q.threshold) for q in measured.quantiles)
    return ImpostorTail(points=points, scale=measured.scale, pairs=measured.pairs)


@pytest.fixture(scope="module")
def exponential_tail() -> ImpostorTail:
    scores = np.random.default_rng(1).exponential(1 / EXPONENTIAL_RATE, SAMPLES)
    return measured_tail(scores, fit_far=1e-3)  # 2,000 excesses: the scale within about 2%


@pytest.fixture(scope="module")
def gaussian_tail() -> ImpostorTail:
    scores = np.random.default_rng(2).normal(0.0, GAUSSIAN_SIGMA, SAMPLES)
    return measured_tail(scores)


def exponential_quantile(far: float) -> float:
    return -math.log(far) / EXPONENTIAL_RATE


def gaussian_quantile(far: float) -> float:
    return NormalDist(0.0, GAUSSIAN_SIGMA).inv_cdf(1 - far)


@pytest.mark.parametrize(
    ("target_fpir", "comparisons"), [(1e-2, 1), (1e-3, 1), (1e-3, 1000), (1e-2, 10**6)]
)
def test_per_comparison_far_inverts_the_max_of_n_comparisons(
    target_fpir: float, comparisons: int
) -> None:
    far = per_comparison_far(target_fpir, comparisons)
    assert expected_fpir(far, comparisons) == pytest.approx(target_fpir, rel=1e-9)
    assert far == pytest.approx(target_fpir / comparisons, rel=target_fpir)


@pytest.mark.parametrize("far", [1e-2, 1e-3, 3e-4, 1e-4])
def test_measured_quantiles_match_the_exponential_distribution(
    exponential_tail: ImpostorTail, far: float
) -> None:
    threshold, extrapolated = exponential_tail.threshold_at(far)
    assert not extrapolated
    # The count above a quantile of 2e6 samples has a relative error of 1/sqrt(far x 2e6):
    # at most 7% at 1e-4 (quantiles with fewer than 100 above are not measured).
    assert far >= exponential_tail.deepest.far
    assert threshold == pytest.approx(exponential_quantile(far), abs=0.1 / EXPONENTIAL_RATE)


def test_fitted_exponential_scale_is_the_distributions_mean_excess(
    exponential_tail: ImpostorTail,
) -> None:
    assert exponential_tail.scale == pytest.approx(1 / EXPONENTIAL_RATE, rel=0.1)


@pytest.mark.parametrize(("gallery_size", "target_fpir"), [(1000, 1e-3), (10**5, 1e-3)])
def test_derived_threshold_beyond_the_data_follows_the_exponential_tail(
    exponential_tail: ImpostorTail, gallery_size: int, target_fpir: float
) -> None:
    derived = derive_threshold(
        exponential_tail, gallery_size=gallery_size, target_fpir=target_fpir, floor=0.0
    )
    analytic = exponential_quantile(per_comparison_far(target_fpir, gallery_size))
    assert derived.source == "impostor_tail_extrapolated"
    # Extrapolated ln(1e-5 / far) scales beyond the deepest point: the scale's 2% error
    # times up to 7 scales, 3 standard errors of it.
    assert derived.threshold == pytest.approx(analytic, abs=0.5 / EXPONENTIAL_RATE)


@pytest.mark.parametrize(("gallery_size", "target_fpir"), [(10, 1e-2), (100, 1e-2), (10, 1e-3)])
def test_derived_threshold_within_the_data_is_the_gaussian_quantile(
    gaussian_tail: ImpostorTail, gallery_size: int, target_fpir: float
) -> None:
    derived = derive_threshold(
        gaussian_tail, gallery_size=gallery_size, target_fpir=target_fpir, floor=-1.0
    )
    far = per_comparison_far(target_fpir, gallery_size)
    assert derived.source == "impostor_tail"
    assert derived.per_comparison_far == pytest.approx(far)
    assert derived.threshold == pytest.approx(gaussian_quantile(far), abs=0.05 * GAUSSIAN_SIGMA)


def test_extrapolating_a_gaussian_tail_errs_high_not_low(gaussian_tail: ImpostorTail) -> None:
    """A Gaussian's tail is lighter than any exponential: the extrapolated threshold lies
    above the true quantile (a lower FPIR than targeted), never below it."""
    for gallery_size in (10**4, 10**6):
        derived = derive_threshold(
            gaussian_tail, gallery_size=gallery_size, target_fpir=1e-3, floor=-1.0
        )
        truth = gaussian_quantile(per_comparison_far(1e-3, gallery_size))
        assert derived.source == "impostor_tail_extrapolated"
        assert truth < derived.threshold < truth + 2 * GAUSSIAN_SIGMA


def test_simulated_strangers_are_matched_at_the_target_fpir(gaussian_tail: ImpostorTail) -> None:
    """The max over a gallery of independent impostor scores reaches the derived threshold
    for about the targeted share of strangers."""
    gallery_size, target_fpir, strangers = 50, 0.02, 40_000
    derived = derive_threshold(
        gaussian_tail, gallery_size=gallery_size, target_fpir=target_fpir, floor=-1.0
    )
    rng = np.random.default_rng(3)
    best = rng.normal(0.0, GAUSSIAN_SIGMA, (strangers, gallery_size)).max(axis=1)
    measured = float(np.mean(best >= derived.threshold))
    # 800 expected false matches: a binomial standard error of 3.5%.
    assert measured == pytest.approx(target_fpir, rel=0.15)


def test_threshold_grows_with_the_gallery(exponential_tail: ImpostorTail) -> None:
    thresholds = [
        derive_threshold(exponential_tail, gallery_size=n, target_fpir=1e-3, floor=0.0).threshold
        for n in (1, 10, 1000, 10**5, 10**7)
    ]
    assert thresholds == sorted(thresholds)
    assert len(set(thresholds)) == len(thresholds)


def test_threshold_never_goes_below_the_match_floor(exponential_tail: ImpostorTail) -> None:
    derived = derive_threshold(exponential_tail, gallery_size=1, target_fpir=1e-2, floor=0.4)
    assert (derived.threshold, derived.source) == (0.4, "match_floor")


def test_an_empty_gallery_gets_the_threshold_of_one_face(exponential_tail: ImpostorTail) -> None:
    empty = derive_threshold(exponential_tail, gallery_size=0, target_fpir=1e-3, floor=0.0)
    one = derive_threshold(exponential_tail, gallery_size=1, target_fpir=1e-3, floor=0.0)
    assert empty.threshold == one.threshold
    assert empty.gallery_size == 0


def test_unreachable_targets_are_capped_at_similarity_one() -> None:
    tail = ImpostorTail(points=(TailPoint(1e-3, 0.9),), scale=0.1, pairs=10**4)
    derived = derive_threshold(tail, gallery_size=10**6, target_fpir=1e-3, floor=0.3)
    assert (derived.threshold, derived.source) == (1.0, "capped")


def test_without_a_tail_the_fixed_threshold_applies() -> None:
    derived = derive_threshold(None, gallery_size=10**6, target_fpir=1e-3, floor=0.3557)
    assert (derived.threshold, derived.source, derived.target_fpir) == (0.3557, "fixed", 1e-3)


def test_interpolation_is_linear_in_log_far() -> None:
    tail = ImpostorTail(
        points=(TailPoint(1e-3, 0.3), TailPoint(1e-5, 0.5)), scale=0.05, pairs=10**7
    )
    threshold, extrapolated = tail.threshold_at(1e-4)
    assert threshold == pytest.approx(0.4)
    assert not extrapolated
    assert tail.threshold_at(1e-2) == (0.3, False)  # shallower than measured: the shallowest


@pytest.mark.parametrize(
    ("points", "scale", "message"),
    [
        ((), 0.1, "at least one"),
        ((TailPoint(1e-3, 0.5), TailPoint(1e-4, 0.4)), 0.1, "not monotone"),
        ((TailPoint(1e-3, 0.5),), 0.0, "positive"),
        ((TailPoint(1.5, 0.5),), 0.1, "far must be"),
    ],
)
def test_invalid_tails_are_refused(
    points: tuple[TailPoint, ...], scale: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ImpostorTail(points=points, scale=scale, pairs=100)


@pytest.mark.parametrize(("fpir", "n"), [(0.0, 10), (1.0, 10), (1e-3, 0)])
def test_per_comparison_far_refuses_meaningless_inputs(fpir: float, n: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        per_comparison_far(fpir, n)


def test_exponential_scale_ignores_a_few_gross_outliers() -> None:
    """Pairs of one person under two names (label noise) must not fatten the tail."""
    excesses = np.random.default_rng(4).exponential(0.025, 3000)
    contaminated = np.concatenate([excesses, np.full(30, 0.6)])
    assert exponential_scale(contaminated) == pytest.approx(0.025, rel=0.08)
    assert contaminated.mean() > 1.2 * 0.025  # what a mean-excess fit would have said
    with pytest.raises(ValueError, match="negative"):
        exponential_scale(np.array([-0.1, 0.2]))
