"""training.evaluate: embedding crops in batches, and ROC plots (the numerics are
training.evaluation, tested in tests/training/evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.dependencies import require
from training.evaluate import embed_faces, plot_roc
from training.evaluation import verify


class RowSums:
    """An embedder whose embedding of a crop is (its pixel sum, batch size it came in)."""

    dim = 2

    def __init__(self) -> None:
        self.batches: list[int] = []

    def embed(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append(len(crops))
        sums = crops.reshape(len(crops), -1).sum(axis=1).astype(np.float32)
        return np.stack([sums, np.full_like(sums, len(crops))], axis=1)


def test_embed_faces_keeps_the_order_across_batches() -> None:
    crops = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    embedder = RowSums()
    embeddings = embed_faces(embedder, crops, batch_size=2, progress=False)  # type: ignore[arg-type]
    assert embedder.batches == [2, 2, 1]
    assert embeddings[:, 0].tolist() == [0, 12, 24, 36, 48]  # 4 pixels x 3 channels x value
    empty = embed_faces(embedder, crops[:0], progress=False)  # type: ignore[arg-type]
    assert empty.shape == (0, 2)


def test_roc_plot_is_written_as_png(tmp_path: Path) -> None:
    require("matplotlib", "the [train] extra")
    rng = np.random.default_rng(7)
    result = verify(
        rng.normal(1, 1, 500).astype(np.float32), rng.normal(0, 1, 5000).astype(np.float32)
    )
    path = plot_roc({"model": result.curve}, tmp_path / "roc.png", "test")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_report_table_keeps_long_model_names_apart() -> None:
    from training.report import format_table

    def summary(tar: float) -> dict[str, object]:
        return {"verification": {"frontal_profile": {"tar_at_far": {"1e-3": tar}}}}

    long_name = "finetuned (runs/cfp-anchored/manifest.json)"
    table = format_table(
        {"base": summary(0.9652), "finetuned": summary(0.9696), long_name: summary(0.9629)}
    )
    header, rule, row = table.splitlines()
    assert header.split()[1:] == [
        "base",
        "finetuned",
        "finetuned",
        "(runs/cfp-anchored/manifest.json)",
    ]
    # Each candidate's change is against the first model, not against its neighbour.
    assert row.split() == [
        "frontal-profile",
        "TAR@FAR=1e-3",
        "96.52",
        "96.96",
        "(+0.44)",
        "96.29",
        "(-0.23)",
    ]
    # Each figure ends under the end of its model's name.
    assert row.index("(-0.23)") + len("(-0.23)") == header.index(long_name) + len(long_name)
    assert len(rule) == len(header)
