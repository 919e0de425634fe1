"""Aligned faces with who they are, and how identities are split (numpy only, no PyTorch).

Both sources of training data produce a ``FaceSet``: identity folders
(``training.data``) and a service gallery (``training.gallery_data``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class FaceSet:
    """Aligned faces with who they are and where they came from (rows aligned)."""

    crops: NDArray[np.uint8]  # (N, 112, 112, 3) RGB
    identities: tuple[str, ...]
    relpaths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.identities)

    def subset(self, indices: Sequence[int] | NDArray[np.int64]) -> FaceSet:
        rows = np.asarray(indices, dtype=np.int64)
        return FaceSet(
            crops=self.crops[rows],
            identities=tuple(self.identities[i] for i in rows),
            relpaths=tuple(self.relpaths[i] for i in rows),
        )

    def of_identities(self, identities: Sequence[str]) -> FaceSet:
        wanted = set(identities)
        return self.subset([i for i, name in enumerate(self.identities) if name in wanted])

    def labels(self) -> tuple[NDArray[np.int64], list[str]]:
        """Class index per face and the class names (sorted identities)."""
        classes = sorted(set(self.identities))
        index = {name: position for position, name in enumerate(classes)}
        return np.array([index[name] for name in self.identities], dtype=np.int64), classes

    def poses(self) -> list[str | None]:
        """``frontal``/``profile`` when a path says so (the CFP layout), else None."""
        return [pose_of(relpath) for relpath in self.relpaths]


def pose_of(relpath: str) -> str | None:
    parts = relpath.split("/")[1:-1]
    return next((part for part in parts if part in {"frontal", "profile"}), None)


def split_identities(
    identities: Sequence[str], val: float, seed: int
) -> tuple[list[str], list[str]]:
    """Identities -> (train, validation), disjoint; ``val`` is a count (>= 1) or a fraction.

    A seeded permutation of the sorted names: the split depends only on the set of
    identities, the size and the seed.
    """
    names = sorted(set(identities))
    count = int(val) if val >= 1 else round(val * len(names))
    if not 2 <= count <= len(names) - 1:
        raise ValueError(
            f"cannot hold out {count} of {len(names)} identities: validation needs at "
            "least 2 and training at least 1"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    val_names = sorted(names[i] for i in order[:count])
    train_names = sorted(names[i] for i in order[count:])
    return train_names, val_names
