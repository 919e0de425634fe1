"""Evaluation steps that need more than numpy: embedding crops with a recognizer, and ROC
plots. The numerics (protocols, calibration, ROC points) are ``training.evaluation``.

Embeddings come from anything with the service's ``Embedder`` shape
(``.embed(aligned_faces)``): the service's own onnxruntime ``ArcFaceEmbedder`` or
``training.torch_embed.TorchEmbedder``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from app.core.pipeline import Embedder
from app.core.types import FloatArray
from training.evaluation import (
    REPORT_FARS,
    LfwPair,
    ProtocolResult,
    lfw_accuracy,
    validation_protocol,
)
from training.faces import FaceSet

# Points kept on a plotted ROC curve; the full curve has one per distinct score.
PLOT_POINTS = 2000


def embed_faces(
    embedder: Embedder,
    crops: NDArray[np.uint8],
    *,
    batch_size: int = 128,
    desc: str = "embed",
    progress: bool = True,
) -> FloatArray:
    """(N, 112, 112, 3) uint8 RGB crops -> (N, dim) unit-norm embeddings, in batches."""
    parts = [
        embedder.embed(crops[start : start + batch_size])
        for start in tqdm(
            range(0, crops.shape[0], batch_size), desc=desc, unit="batch", disable=not progress
        )
    ]
    if not parts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def plot_roc(curves: Mapping[str, tuple[FloatArray, FloatArray]], path: Path, title: str) -> Path:
    """ROC curves (TAR against FAR, log FAR axis) as a PNG; one line per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for label, (far, tar) in curves.items():
        # Log axis: drop FAR 0; thin long curves geometrically (dense at low FAR).
        kept = np.flatnonzero(far > 0)
        if kept.size > PLOT_POINTS:
            kept = kept[np.unique(np.geomspace(1, kept.size, PLOT_POINTS).astype(int) - 1)]
        axes.plot(far[kept], tar[kept], label=label, linewidth=1.5)
    for far_mark in REPORT_FARS:
        axes.axvline(far_mark, color="0.85", linewidth=0.8, zorder=0)
    axes.set_xscale("log")
    axes.set_xlim(1e-5, 1)
    axes.set_ylim(0, 1.001)
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def evaluate_embeddings(
    embeddings: FloatArray,
    faces: FaceSet,
    lfw: tuple[list[LfwPair], FaceSet, FloatArray] | None,
) -> tuple[ProtocolResult, dict[str, Any]]:
    """Validation protocol (+ LFW when given) as (result, JSON-ready summary)."""
    result = validation_protocol(embeddings, faces.identities, faces.poses())
    summary = result.summary()
    if lfw is not None:
        pairs, lfw_faces, lfw_embeddings = lfw
        summary["lfw"] = lfw_accuracy(
            pairs, dict(zip(lfw_faces.relpaths, lfw_embeddings, strict=True))
        )
    return result, summary
