"""Aligned crops -> network input, and flip-sum: the one place training does either.

The module's input contract (the service's ArcFace preprocessing, checked against the
base manifest by ``training.base_model``): aligned 112x112 RGB crops,
``(pixel - 127.5) / 127.5``, NCHW float32. Flip-sum: the embedding of a crop plus
that of its mirror image (manifest ``augment.flip``), normalised by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

PIXEL_MEAN = 127.5
PIXEL_STD = 127.5
INPUT_SHAPE = (3, 112, 112)


def faces_to_tensor(faces: NDArray[np.uint8]) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32, (x - 127.5) / 127.5."""
    pixels = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float()
    return (pixels - PIXEL_MEAN) / PIXEL_STD


def views(batch: torch.Tensor, flip: bool) -> list[torch.Tensor]:
    """The network inputs of one embedding: the batch, and its mirror image with ``flip``."""
    return [batch, torch.flip(batch, dims=[3])] if flip else [batch]


def sum_views(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Embeddings of the views of ``views`` summed (flip-sum), not yet normalised."""
    total = outputs[0]
    for extra in outputs[1:]:
        total = total + extra
    return total
