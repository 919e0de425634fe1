"""Closed-set identification: rank-1 of probes against a gallery."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.evaluation.scores import Embeddings


def rank1(
    gallery: Embeddings,
    gallery_ids: Sequence[str],
    probes: Embeddings,
    probe_ids: Sequence[str],
    *,
    leave_one_out: bool = False,
) -> float:
    """Share of probes whose most similar gallery face has their identity (ties: the first
    gallery row). ``leave_one_out``: gallery and probes are the same rows, and a probe never
    matches itself."""
    if len(probe_ids) == 0:
        raise ValueError("rank-1 needs at least one probe")
    similarities = probes @ gallery.T
    if leave_one_out:
        np.fill_diagonal(similarities, -np.inf)
    best = np.argmax(similarities, axis=1)
    return float(
        np.mean([gallery_ids[int(i)] == probe for i, probe in zip(best, probe_ids, strict=True)])
    )
