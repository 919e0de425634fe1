"""The torch ``Dataset`` s a training epoch reads: aligned crops (augmented per epoch) or cached
frozen-prefix features (one view per face and epoch). Both draw every random choice from
(seed, epoch, index), so a run (and a resumed run) sees the same samples whatever the
workers or the device."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from training.config import AugmentConfig
from training.data import augment_face
from training.tensors import faces_to_tensor


class FaceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Aligned crops and class labels; augmentation is a pure function of (seed, epoch, index),
    so a run (and a resumed run) sees the same images whatever the workers or the device."""

    def __init__(
        self,
        crops: NDArray[np.uint8],
        labels: NDArray[np.int64],
        augment: AugmentConfig | None,
        seed: int,
    ) -> None:
        if crops.shape[0] != labels.shape[0]:
            raise ValueError(f"{crops.shape[0]} crops for {labels.shape[0]} labels")
        self.crops = crops
        self.labels = labels
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        face = self.crops[index]
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            face = augment_face(face, rng, self.augment)
        return faces_to_tensor(face[None])[0], int(self.labels[index])


class FeatureDataset(Dataset[tuple[torch.Tensor, int]]):
    """Cached prefix outputs; each epoch every face shows one of its views, drawn from
    (seed, epoch, index)."""

    def __init__(self, features: torch.Tensor, labels: NDArray[np.int64], seed: int) -> None:
        if features.shape[1] != labels.shape[0]:
            raise ValueError(f"{features.shape[1]} feature rows for {labels.shape[0]} labels")
        self.features = features
        self.labels = labels
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        views = self.features.shape[0]
        view = 0
        if views > 1:
            view = int(np.random.default_rng((self.seed, self.epoch, index)).integers(views))
        return self.features[view, index].float(), int(self.labels[index])
