"""Self-distillation to one pass: the base recognizer's last layer groups retrained so that
ONE embedding of a crop points where the base model's flip-sum embedding does.

The service's default recognizer embeds every face twice (the crop and its mirror, summed:
manifest ``augment.flip``), which is half of the CPU of every request. The student is the
base network with its last ``train_last`` layer groups retrained with the loss
``1 - cos(student(view), flip_sum(crop))`` for both views of a crop (the crop and its
mirror share one target, so the student also learns to be mirror-invariant). No labels are
used: any aligned faces serve, never those of the evaluation (LFW). The prefix is frozen
and its outputs for the two views are computed once (``training.prefix``), so the epochs
cost only the suffix. The epoch kept is the one whose embeddings of the held-out faces are
closest to their flip-sum targets.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from numpy.typing import NDArray
from torch import nn

from training.backbone import ImportedBackbone
from training.config import AugmentConfig
from training.prefix import prefix_features, split_before
from training.torch_embed import INFERENCE_BATCH

logger = logging.getLogger("training")

VIEWS = 2  # view 0 the crop, view 1 its mirror (training.prefix's order)


@dataclass(frozen=True, slots=True)
class DistillConfig:
    train_last: int = 5  # layer groups retrained (MobileFaceNet: the last 7x7 stage on)
    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 128
    seed: int = 0


@dataclass(frozen=True, slots=True)
class EpochRecord:
    epoch: int
    loss: float
    val_cosine: float  # mean cos(student(view), flip-sum target) over held-out views


@dataclass
class DistillResult:
    module: nn.Module  # the whole student network (frozen prefix + retrained suffix)
    best_epoch: int
    base_val_cosine: float  # the base model's one pass against the same targets
    history: list[EpochRecord] = field(default_factory=list)


class Student(nn.Module):
    """Frozen prefix, then the retrained suffix: one ordinary module, exported as one."""

    def __init__(self, prefix: nn.Module, suffix: nn.Module) -> None:
        super().__init__()
        self.prefix = prefix
        self.suffix = suffix

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.suffix(self.prefix(batch))
        return result


@torch.no_grad()
def _outputs(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    module.eval()
    chunks = [
        module(features[start : start + 4 * INFERENCE_BATCH].float())
        for start in range(0, features.shape[0], 4 * INFERENCE_BATCH)
    ]
    return torch.cat(chunks).float()


def flip_sum_targets(suffix: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(VIEWS, N, ...) prefix outputs -> (N, dim) unit flip-sum embeddings of the base."""
    return F.normalize(_outputs(suffix, features[0]) + _outputs(suffix, features[1]), dim=1)


def mean_cosine(module: nn.Module, features: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cos(module(view), target) over both views of every face."""
    total = 0.0
    for view in range(VIEWS):
        embeddings = F.normalize(_outputs(module, features[view]), dim=1)
        total += float((embeddings * targets).sum(dim=1).mean())
    return total / VIEWS


def _freeze_batchnorm(module: nn.Module) -> None:
    """Train mode for the suffix, but every BatchNorm keeps the base statistics."""
    module.train()
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm | nn.Dropout):
            layer.eval()


def distill(
    backbone: ImportedBackbone,
    train_crops: NDArray[np.uint8],
    val_crops: NDArray[np.uint8],
    config: DistillConfig,
    *,
    device: torch.device,
    progress: bool,
) -> DistillResult:
    """The one-pass student of ``backbone`` (see the module docstring)."""
    groups = backbone.group_names
    if not 1 <= config.train_last < len(groups):
        raise ValueError(f"train_last must be in 1..{len(groups) - 1}, not {config.train_last}")
    module = copy.deepcopy(backbone.module).to(device).eval()
    split = split_before(module, module.get_submodule(groups[-config.train_last][0]))
    if split is None:
        raise ValueError(f"the network cannot be cut before its last {config.train_last} groups")
    for parameter in split.prefix.parameters():
        parameter.requires_grad_(False)

    def features(crops: NDArray[np.uint8], desc: str) -> torch.Tensor:
        return prefix_features(
            split.prefix,
            crops,
            views=VIEWS,
            augment=AugmentConfig(),
            seed=config.seed,
            device=device,
            desc=desc,
            progress=progress,
        )

    train_features, val_features = features(train_crops, "train"), features(val_crops, "held out")
    teacher = split.suffix
    train_targets = flip_sum_targets(teacher, train_features)
    val_targets = flip_sum_targets(teacher, val_features)
    base_cosine = mean_cosine(teacher, val_features, val_targets)
    logger.info("base model, one pass: held-out cos to its flip-sum %.5f", base_cosine)

    student = copy.deepcopy(teacher)
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    optimiser = torch.optim.Adam(student.parameters(), lr=config.lr)
    generator = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    faces = train_features.shape[1]
    steps_per_epoch = max(1, (VIEWS * faces) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    best_state, best_cosine, best_epoch = copy.deepcopy(student.state_dict()), base_cosine, 0
    history: list[EpochRecord] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        _freeze_batchnorm(student)
        order = generator.permutation(VIEWS * faces)
        running = 0.0
        for batch_index in range(steps_per_epoch):
            rows = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            views, faces_of = torch.from_numpy(rows // faces), torch.from_numpy(rows % faces)
            inputs = train_features[views, faces_of].to(device).float()
            for group in optimiser.param_groups:  # cosine decay to zero over the run
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            outputs = F.normalize(student(inputs), dim=1)
            loss = (1 - (outputs * train_targets[faces_of].to(device)).sum(dim=1)).mean()
            optimiser.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimiser.step()
            running += float(loss.detach())
            step += 1
        cosine = mean_cosine(student, val_features, val_targets)
        history.append(EpochRecord(epoch, running / steps_per_epoch, cosine))
        logger.info(
            "epoch %d/%d: loss %.5f, held-out cos to the flip-sum %.5f (base %.5f)",
            epoch,
            config.epochs,
            running / steps_per_epoch,
            cosine,
            base_cosine,
        )
        if cosine > best_cosine:
            best_state, best_cosine, best_epoch = copy.deepcopy(student.state_dict()), cosine, epoch
    student.load_state_dict(best_state)
    whole = Student(split.prefix, student).eval()
    return DistillResult(whole, best_epoch, base_cosine, history)
