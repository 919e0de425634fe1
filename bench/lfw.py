"""LFW View-2 protocol helpers: pairs parsing and 10-fold verification accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Pair:
    first: str  # path relative to the images folder
    second: str
    same: bool
    fold: int


def image_path(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_pairs(pairs_file: Path) -> list[Pair]:
    """Parse pairs.txt: header `folds per_fold`, then per fold the same, then different pairs."""
    lines = pairs_file.read_text().split("\n")
    folds, per_fold = (int(v) for v in lines[0].split())
    pairs: list[Pair] = []
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    for index, row in enumerate(rows):
        fold = index // (2 * per_fold)
        if len(row) == 3:
            name, a, b = row
            pairs.append(Pair(image_path(name, int(a)), image_path(name, int(b)), True, fold))
        else:
            name_a, a, name_b, b = row
            pairs.append(Pair(image_path(name_a, int(a)), image_path(name_b, int(b)), False, fold))
    if len(pairs) != folds * 2 * per_fold:
        raise ValueError(f"{pairs_file}: expected {folds * 2 * per_fold} pairs, got {len(pairs)}")
    return pairs


def _best_threshold(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> float:
    candidates = np.unique(scores)
    accuracies = [np.mean((scores >= t) == same) for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


def ten_fold_accuracy(
    scores: NDArray[np.float64], same: NDArray[np.bool_], folds: NDArray[np.int64]
) -> tuple[float, float, list[float]]:
    """Standard protocol: threshold chosen on 9 folds, accuracy measured on the 10th."""
    accuracies = []
    thresholds = []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = _best_threshold(scores[train], same[train])
        thresholds.append(threshold)
        accuracies.append(float(np.mean((scores[test] >= threshold) == same[test])))
    return float(np.mean(accuracies)), float(np.std(accuracies)), thresholds
