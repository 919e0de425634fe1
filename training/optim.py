"""What trains and how fast: the trainable layer groups and their modes, parameter groups
(weight decay where it belongs), the optimiser and the warmup-cosine schedule."""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from training.config import OptimConfig
from training.heads import MarginHead


class Backbone(Protocol):
    """What the trainer needs of ``training.backbone.ImportedBackbone``."""

    @property
    def module(self) -> nn.Module: ...

    @property
    def embedding_dim(self) -> int: ...

    def layer_groups(self) -> list[nn.Module]: ...


def trainable_groups(backbone: Backbone, freeze_last: int | None) -> list[nn.Module]:
    """Set ``requires_grad``: all (None), none (0) or the last K layer groups of the backbone."""
    for parameter in backbone.module.parameters():
        parameter.requires_grad_(freeze_last is None)
    if freeze_last is None:
        return [backbone.module]
    groups = backbone.layer_groups()
    if freeze_last > len(groups):
        raise ValueError(f"freeze last:{freeze_last}, but the backbone has {len(groups)} groups")
    chosen = groups[len(groups) - freeze_last :] if freeze_last else []
    for group in chosen:
        for parameter in group.parameters():
            parameter.requires_grad_(True)
    return chosen


def set_modes(module: nn.Module, trainable: list[nn.Module], batchnorm: str) -> None:
    """Train mode only where it matters: trainable groups, and BatchNorm only if asked."""
    module.eval()
    for group in trainable:
        group.train()
        if batchnorm == "frozen":
            for layer in group.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()


def _decays(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay on weight matrices and kernels, not on biases, norms or PReLU slopes."""
    return parameter.ndim > 1 and "prelu" not in name.lower()


def parameter_groups(
    backbone: nn.Module, head: MarginHead, config: OptimConfig
) -> list[dict[str, Any]]:
    """Backbone (decay / no decay) at ``lr_backbone``, head at ``lr_head``; frozen left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in backbone.named_parameters():
        if parameter.requires_grad:
            (decay if _decays(name, parameter) else no_decay).append(parameter)
    groups = [
        {
            "name": "backbone",
            "params": decay,
            "lr": config.lr_backbone,
            "weight_decay": config.weight_decay,
        },
        {
            "name": "backbone_no_decay",
            "params": no_decay,
            "lr": config.lr_backbone,
            "weight_decay": 0.0,
        },
        {
            "name": "head",
            "params": list(head.parameters()),
            "lr": config.lr_head,
            "weight_decay": config.weight_decay,
        },
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(groups: list[dict[str, Any]], config: OptimConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from ~0 to 1 over the warmup, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, config: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """``warmup_cosine`` per optimiser step over ``epochs`` epochs of ``steps_per_epoch``."""
    total = steps_per_epoch * epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, config.min_lr_ratio)
    )
