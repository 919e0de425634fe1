"""Checkpoints of a training run: the loop's counters, the random generators' states, and an
atomic write (a crash mid-save leaves the previous file intact).

``checkpoints/last.pt`` resumes a run (weights, optimiser, schedule, counters, RNG), so a
resumed run takes the same steps as one that never stopped; ``checkpoints/best.pt`` holds
the best epoch's weights.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(slots=True)
class TrainState:
    epoch: int = 0  # last completed epoch (0: nothing trained yet)
    metric_name: str = "val_metric"
    best_metric: float = -math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """The counters as saved in a checkpoint (the epoch is saved beside them)."""
        return {
            "metric_name": self.metric_name,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "history": self.history,
        }

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> TrainState:
        saved = payload["state"]
        return cls(
            epoch=int(payload["epoch"]),
            metric_name=str(saved["metric_name"]),
            best_metric=float(saved["best_metric"]),
            best_epoch=int(saved["best_epoch"]),
            stale_epochs=int(saved["stale_epochs"]),
            history=list(saved["history"]),
        )


def rng_states() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng_states(saved: dict[str, Any]) -> None:
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"].cpu())


def write_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    payload: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    return payload
