"""A growable one-dimensional numpy array: appends in amortised O(1), views without copies."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

# Room made on the first append; capacity doubles after that.
INITIAL_CAPACITY = 64


class Column:
    """Values of one per-face attribute, position ``i`` for the face at position ``i``.

    Byte-string columns widen when a longer value arrives, so nothing is ever
    truncated (numpy would silently cut a value to the column's width).
    """

    def __init__(self, dtype: DTypeLike, values: ArrayLike | None = None) -> None:
        initial = np.asarray([] if values is None else values, dtype=dtype)
        if initial.ndim != 1:
            raise ValueError(f"a column holds one value per face, got shape {initial.shape}")
        self._data: np.ndarray[Any, Any] = initial.copy()
        self._size = len(initial)

    def __len__(self) -> int:
        return self._size

    @property
    def view(self) -> np.ndarray[Any, Any]:
        """The filled part (a view: valid until the next ``extend``)."""
        return self._data[: self._size]

    def extend(self, values: ArrayLike) -> None:
        array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"a column holds one value per face, got shape {array.shape}")
        if array.dtype.kind == "S" and array.dtype.itemsize > self._data.dtype.itemsize:
            self._data = self._data.astype(array.dtype)
        needed = self._size + len(array)
        if needed > len(self._data):
            grown = np.empty(max(needed, 2 * len(self._data), INITIAL_CAPACITY), self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : needed] = array
        self._size = needed
