"""LFW View-2 pairs: ``pairs.txt`` parsing and an even subset of its folds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LfwPair:
    first: str  # path relative to lfw/images: Name/Name_0001.jpg
    second: str
    same: bool
    fold: int


def lfw_image(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_lfw_pairs(pairs_file: Path) -> list[LfwPair]:
    """``pairs.txt`` of LFW View 2: a header ``folds per_fold``, then for each fold
    ``per_fold`` same pairs (``name a b``) followed by ``per_fold`` different pairs
    (``name_a a name_b b``). Anything else is refused with the line number."""
    lines = [
        (number, line)
        for number, line in enumerate(pairs_file.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip()
    ]
    if not lines:
        raise ValueError(f"{pairs_file}: empty")
    try:
        folds, per_fold = (int(v) for v in lines[0][1].split())
    except ValueError:
        raise ValueError(f"{pairs_file}:1: header must be 'folds per_fold'") from None
    rows = lines[1:]
    if len(rows) != folds * 2 * per_fold:
        raise ValueError(f"{pairs_file}: expected {folds * 2 * per_fold} pairs, got {len(rows)}")
    pairs = []
    for index, (number, line) in enumerate(rows):
        fold, same = index // (2 * per_fold), index % (2 * per_fold) < per_fold
        fields = line.split()
        try:
            if same and len(fields) == 3:
                name, a, b = fields
                pairs.append(LfwPair(lfw_image(name, int(a)), lfw_image(name, int(b)), True, fold))
                continue
            if not same and len(fields) == 4:
                name_a, a, name_b, b = fields
                first, second = lfw_image(name_a, int(a)), lfw_image(name_b, int(b))
                pairs.append(LfwPair(first, second, False, fold))
                continue
        except ValueError:
            pass
        kind = "same pair 'name a b'" if same else "different pair 'name_a a name_b b'"
        raise ValueError(f"{pairs_file}:{number}: expected a {kind} of fold {fold}, got {line!r}")
    return pairs


def select_pairs(pairs: Sequence[LfwPair], limit: int | None) -> list[LfwPair]:
    """All pairs, or the first ``limit // (2 x folds)`` same and as many different pairs of
    every fold: a quick run that keeps the 10-fold protocol and its balance (the first N
    lines of pairs.txt would be one fold of one kind)."""
    if limit is None or limit >= len(pairs):
        return list(pairs)
    folds = sorted({pair.fold for pair in pairs})
    per_group = max(1, limit // (2 * len(folds)))
    return [
        pair
        for fold in folds
        for same in (True, False)
        for pair in [p for p in pairs if p.fold == fold and p.same is same][:per_group]
    ]


def pair_images(pairs: Sequence[LfwPair]) -> list[str]:
    """The distinct images of the pairs, sorted."""
    return sorted({name for pair in pairs for name in (pair.first, pair.second)})


def lfw_identity(image: str) -> str:
    """LFW files people by folder: ``Name/Name_0001.jpg`` -> ``Name``."""
    return image.split("/", 1)[0]
