"""Margin heads: normalised class weights, additive angular / cosine margins.

Every head computes, for the target class y of each sample,
``s * (cos(m1 * theta_y + m2) - m3)`` and ``s * cos(theta_j)`` for the others,
where ``theta`` is the angle between the normalised embedding and the normalised
class weight. ArcFace is (1, m, 0), CosFace (1, 0, m), and the InsightFace
"combined" margin any (m1, m2, m3).

``m1 * theta + m2`` can exceed pi for hard samples, where cos stops decreasing
and the margin would *reward* a worse angle. Two standard remedies:

* ``easy_margin``: apply the margin only where cos(theta) > 0;
* otherwise (default) past the boundary theta_b = (pi - m2) / m1 the target logit
  continues as ``cos(theta) - (1 + cos(theta_b))``, which meets cos(pi) = -1 at the
  boundary and stays monotonic (InsightFace uses the similar ``cos - m sin m``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

# Keeps acos away from +-1, where its gradient is infinite.
_COS_EPS = 1e-7


def margin_target_logits(
    cosine: torch.Tensor, m1: float, m2: float, m3: float, *, easy_margin: bool = False
) -> torch.Tensor:
    """cos(m1 * theta + m2) - m3 for cosines of target angles, with the fallback above."""
    if m1 == 1.0 and m2 == 0.0:
        return cosine - m3  # CosFace: no angle needed
    theta = torch.acos(cosine.clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS))
    with_margin = torch.cos(m1 * theta + m2)
    if easy_margin:
        adjusted = torch.where(cosine > 0, with_margin, cosine)
    else:
        boundary = (math.pi - m2) / m1
        fallback = cosine - (1.0 + math.cos(boundary))
        adjusted = torch.where(theta <= boundary, with_margin, fallback)
    return adjusted - m3


class MarginHead(nn.Module):
    """Normalised linear classifier with a margin on the target logit (training only)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float = 64.0,
        margins: tuple[float, float, float] = (1.0, 0.5, 0.0),
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a margin head needs at least 2 classes, got {num_classes}")
        m1, m2, m3 = margins
        if m1 <= 0 or m2 < 0 or m3 < 0:
            raise ValueError(f"margins need m1 > 0, m2 >= 0, m3 >= 0; got {margins}")
        self.scale = scale
        self.margins = margins
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @torch.no_grad()
    def init_from_centroids(self, centroids: torch.Tensor) -> None:
        """Start each class weight at that identity's mean embedding ("imprinting")."""
        if centroids.shape != self.weight.shape:
            raise ValueError(
                f"centroids {tuple(centroids.shape)} do not match weights "
                f"{tuple(self.weight.shape)}"
            )
        self.weight.copy_(F.normalize(centroids.float(), dim=1))

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) cosines between embeddings and class weights (both normalised in fp32)."""
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin on each sample's target class; feed to cross-entropy."""
        cosine = self.cosines(embeddings)
        rows = torch.arange(cosine.shape[0], device=cosine.device)
        target = cosine[rows, labels]
        m1, m2, m3 = self.margins
        adjusted = margin_target_logits(target, m1, m2, m3, easy_margin=self.easy_margin)
        logits = cosine.index_put((rows, labels), adjusted)
        return logits * self.scale


def build_head(
    kind: str,
    embedding_dim: int,
    num_classes: int,
    *,
    scale: float,
    margins: tuple[float, float, float],
    easy_margin: bool,
) -> MarginHead:
    """A ``MarginHead`` for ``kind`` (arcface | cosface | combined); margins already resolved."""
    if kind not in {"arcface", "cosface", "combined"}:
        raise ValueError(f"unknown head {kind!r}: use arcface, cosface or combined")
    return MarginHead(
        embedding_dim, num_classes, scale=scale, margins=margins, easy_margin=easy_margin
    )
