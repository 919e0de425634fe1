"""Margin heads: the target-logit formulas, the theta + m > pi fallback, normalisation."""

from __future__ import annotations

import math

import pytest

from tests.dependencies import require

torch = require("torch", "the [train] extra")

from training.heads import MarginHead, build_head, margin_target_logits  # noqa: E402

ANGLES = torch.linspace(0.05, math.pi - 0.05, 200, dtype=torch.float64)


@pytest.mark.parametrize(
    ("margins", "expected"),
    [
        ((1.0, 0.5, 0.0), lambda t: torch.cos(t + 0.5)),  # ArcFace
        ((1.0, 0.0, 0.35), lambda t: torch.cos(t) - 0.35),  # CosFace
        ((1.0, 0.3, 0.2), lambda t: torch.cos(t + 0.3) - 0.2),  # combined
        ((0.9, 0.4, 0.15), lambda t: torch.cos(0.9 * t + 0.4) - 0.15),
    ],
)
def test_target_logit_follows_the_margin_formula_where_it_is_monotonic(margins, expected):
    m1, m2, _ = margins
    valid = ANGLES[m1 * ANGLES + m2 <= math.pi]
    logits = margin_target_logits(torch.cos(valid), *margins)
    torch.testing.assert_close(logits, expected(valid), atol=1e-6, rtol=0)


@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.0, 0.8, 0.1), (0.8, 1.2, 0.0)])
def test_fallback_past_pi_keeps_the_target_logit_continuous_and_decreasing(margins):
    logits = margin_target_logits(torch.cos(ANGLES), *margins)
    steps = logits[1:] - logits[:-1]
    assert (steps < 0).all(), "the logit must fall as the angle grows, everywhere"
    assert steps.abs().max() < 0.05, "no jump at the boundary theta = (pi - m2) / m1"


def test_easy_margin_leaves_obtuse_angles_alone():
    cosine = torch.tensor([0.9, 0.1, -0.2, -0.9], dtype=torch.float64)
    logits = margin_target_logits(cosine, 1.0, 0.5, 0.0, easy_margin=True)
    torch.testing.assert_close(logits[2:], cosine[2:])
    torch.testing.assert_close(logits[:2], torch.cos(torch.acos(cosine[:2]) + 0.5))


def test_head_scales_cosines_and_applies_the_margin_to_the_target_only():
    torch.manual_seed(0)
    head = MarginHead(8, 5, scale=30.0, margins=(1.0, 0.0, 0.4))
    embeddings = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = head(embeddings, labels)
    cosines = head.cosines(embeddings)
    expected = cosines.clone()
    expected[torch.arange(6), labels] -= 0.4
    torch.testing.assert_close(logits, 30.0 * expected)


def test_class_weights_and_embeddings_are_normalised():
    torch.manual_seed(0)
    head = MarginHead(8, 4)
    embeddings = torch.randn(3, 8)
    labels = torch.tensor([0, 1, 2])
    before = head(embeddings, labels)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([[3.0], [0.5], [7.0], [2.0]]))
    torch.testing.assert_close(head(embeddings * 11.0, labels), before)


def test_init_from_centroids_points_each_class_at_its_centroid():
    head = MarginHead(4, 2)
    centroids = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    head.init_from_centroids(centroids)
    cosines = head.cosines(centroids)
    torch.testing.assert_close(cosines, torch.eye(2))


def test_gradients_stay_finite_at_cosine_one():
    head = MarginHead(4, 3, margins=(1.0, 0.5, 0.0))
    head.init_from_centroids(torch.eye(3, 4))
    embeddings = torch.eye(3, 4).requires_grad_(True)  # exactly on the class weights
    loss = torch.nn.functional.cross_entropy(head(embeddings, torch.arange(3)), torch.arange(3))
    loss.backward()
    assert embeddings.grad is not None
    assert torch.isfinite(embeddings.grad).all()
    assert torch.isfinite(head.weight.grad).all()


def test_invalid_heads_are_refused():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("sphereface", 8, 3, scale=64, margins=(1, 0.5, 0), easy_margin=False)
    with pytest.raises(ValueError, match="at least 2 classes"):
        MarginHead(8, 1)
    with pytest.raises(ValueError, match="m1 > 0"):
        MarginHead(8, 3, margins=(0.0, 0.5, 0.0))
    with pytest.raises(ValueError, match="do not match"):
        MarginHead(8, 3).init_from_centroids(torch.zeros(2, 8))
