"""The training loop: a backbone plus a margin head fitted on the training identities, with
AMP, DDP, early stopping and checkpoints.

After every epoch the validation protocol is measured with flip-sum embeddings (the way
the service embeds). The best epoch's backbone is kept; an epoch 0 row measures the
untouched base model, so a fine-tune that never beats the base returns the base weights.

With the frozen-prefix cache (``training.prefix``) the epochs run only the trainable
suffix on cached prefix features: ``train.feature_views`` views are drawn from per epoch
instead of a fresh augmentation; ``train.cache_features=false`` trains on images end to
end.

Reproducibility: the order of the samples, the views and every augmentation are functions
of (seed, epoch, index), so a run resumed from ``checkpoints/last.pt`` takes the same
steps as one that never stopped. Under ``torchrun`` with WORLD_SIZE > 1 the model runs in
DistributedDataParallel; only rank 0 evaluates and writes.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from numpy.typing import NDArray
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from app.config import available_cores
from app.core.types import FloatArray
from training.checkpoints import (
    TrainState,
    read_checkpoint,
    restore_rng_states,
    rng_states,
    write_checkpoint,
)
from training.config import FinetuneConfig
from training.datasets import FaceDataset, FeatureDataset
from training.evaluate import embed_faces
from training.evaluation import ProtocolResult, headline_metric, validation_protocol
from training.faces import FaceSet
from training.heads import MarginHead, build_head
from training.optim import (
    Backbone,
    build_optimizer,
    parameter_groups,
    set_modes,
    trainable_groups,
    warmup_cosine_schedule,
)
from training.prefix import FEATURE_DTYPES, frozen_split, prefix_features
from training.report import append_csv, flatten_protocol
from training.run_files import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_CSV
from training.runtime import Distributed, resolve_device, seed_everything
from training.torch_embed import TorchEmbedder, class_centroids, embed_twice, suffix_embeddings

logger = logging.getLogger(__name__)

# Columns of the per-epoch log that come from training (NaN in the epoch 0 row).
TRAIN_COLUMNS = ("train_loss", "train_accuracy", "lr_backbone", "lr_head")
# A metric must beat the best so far by more than this to count as an improvement.
MIN_IMPROVEMENT = 1e-6


class Recognizer(nn.Module):
    """Backbone (or its trainable suffix) + margin head as one module, so DDP syncs both."""

    def __init__(self, backbone: nn.Module, head: MarginHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.backbone(inputs), labels)
        return logits


# --- the loop -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FitResult:
    metric_name: str
    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]]
    seconds: float
    feature_cache: bool

    def document(self) -> dict[str, Any]:
        """The fit as the manifest and metrics.json record it."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "selection_metric": self.metric_name,
            "best_metric": self.best_metric,
            "feature_cache": self.feature_cache,
        }


class Trainer:
    """Fine-tunes ``backbone`` on ``train`` faces, selecting epochs on ``val`` faces."""

    def __init__(
        self,
        config: FinetuneConfig,
        backbone: Backbone,
        train: FaceSet,
        val: FaceSet,
        out_dir: Path,
        *,
        distributed: Distributed | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.backbone = backbone
        self.train_faces = train
        self.val = val
        self.out_dir = out_dir
        self.dist = distributed or Distributed()
        self.progress = progress and self.dist.is_main
        self.device = resolve_device(config.train.device, self.dist.local_rank)
        self.amp = config.train.amp and self.device.type == "cuda"
        if self.device.type == "cpu":
            torch.set_num_threads(config.train.threads or available_cores())
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(config.train.seed)
        self.labels, self.classes = train.labels()
        backbone.module.to(self.device)
        self.trainable = trainable_groups(backbone, config.freeze_last())
        self.split = frozen_split(
            backbone.module, self.trainable, config.train, freeze_last=config.freeze_last()
        )
        self.head = build_head(
            config.head.kind,
            backbone.embedding_dim,
            len(self.classes),
            scale=config.head.scale,
            margins=config.head.margins(),
            easy_margin=config.head.easy_margin,
        ).to(self.device)
        self.optimizer = build_optimizer(
            parameter_groups(backbone.module, self.head, config.optim), config.optim
        )
        self.embedder = TorchEmbedder(
            backbone.module, backbone.embedding_dim, device=self.device, flip=config.export.flip
        )
        self.state = TrainState()
        self._val_features: torch.Tensor | None = None
        self._loader: DataLoader[tuple[torch.Tensor, int]] | None = None
        per_process = max(2, config.train.batch_size // self.dist.world_size)
        self.steps_per_epoch = len(train) // self.dist.world_size // per_process
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(train)} training faces cannot fill one batch of {config.train.batch_size}"
            )
        self.scheduler = warmup_cosine_schedule(
            self.optimizer, self.steps_per_epoch, config.train.epochs, config.optim
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        trained = self.split.suffix if self.split is not None else backbone.module
        # The base model's trainable part, for base-vs-fine-tuned comparisons.
        self.base_trained = copy.deepcopy(trained).eval()
        model = Recognizer(trained, self.head)
        self.model: nn.Module = (
            DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.dist.enabled
            else model
        )

    # --- data -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Build the training loader (and the feature caches) once."""
        if self._loader is not None:
            return
        config = self.config.train
        dataset: FaceDataset | FeatureDataset
        if self.split is None:
            dataset = FaceDataset(
                self.train_faces.crops, self.labels, self.config.augment, config.seed
            )
        else:
            prefix = self.split.prefix

            def features(crops: NDArray[np.uint8], views: int, desc: str) -> torch.Tensor:
                return prefix_features(
                    prefix,
                    crops,
                    views=views,
                    augment=self.config.augment,
                    seed=config.seed,
                    device=self.device,
                    desc=desc,
                    progress=self.progress,
                    dtype=FEATURE_DTYPES[config.feature_dtype],
                )

            train_features = features(
                self.train_faces.crops, config.feature_views, "train features"
            )
            dataset = FeatureDataset(train_features, self.labels, config.seed)
            if self.dist.is_main:
                flip_views = 2 if self.config.export.flip else 1
                self._val_features = features(self.val.crops, flip_views, "val features")
        self._dataset = dataset
        self._sampler: DistributedSampler[int] = DistributedSampler(
            dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=config.seed,
        )
        self._loader = DataLoader(
            dataset,
            batch_size=max(2, config.batch_size // self.dist.world_size),
            sampler=self._sampler,
            drop_last=True,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def embed_validation(self) -> FloatArray:
        """Flip-sum (if configured) unit-norm embeddings of the validation faces."""
        if self.split is None or self._val_features is None:
            return embed_faces(
                self.embedder, self.val.crops, desc="validate", progress=self.progress
            )
        return self._suffix_embeddings(self._val_features)

    def _suffix_embeddings(self, features: torch.Tensor) -> FloatArray:
        assert self.split is not None
        return suffix_embeddings(self.split.suffix, features, self.device)

    def _initial_centroids(self) -> torch.Tensor:
        if self.split is None:
            embeddings = embed_faces(
                self.embedder, self.train_faces.crops, desc="centroids", progress=self.progress
            )
        else:
            dataset = self._dataset
            assert isinstance(dataset, FeatureDataset)
            views = min(2, dataset.features.shape[0])
            embeddings = self._suffix_embeddings(dataset.features[:views])
        return class_centroids(embeddings, self.labels, len(self.classes))

    def embed_base_and_tuned(
        self, crops: NDArray[np.uint8], *, desc: str = "embed"
    ) -> tuple[FloatArray, FloatArray]:
        """Flip-sum unit-norm embeddings of ``crops`` by the base and the fine-tuned model.

        With the frozen-prefix cache the prefix runs once for both (they share it).
        """
        return embed_twice(
            crops,
            prefix=self.split.prefix if self.split is not None else None,
            first=self.base_trained,
            second=self.model_part,
            device=self.device,
            flip=self.config.export.flip,
            desc=desc,
            progress=self.progress,
        )

    @property
    def model_part(self) -> nn.Module:
        """What trains: the suffix after the frozen prefix, or the whole backbone."""
        return self.split.suffix if self.split is not None else self.backbone.module

    # --- checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    def save_checkpoint(self, path: Path) -> None:
        if not self.dist.is_main:
            return
        payload = {
            "epoch": self.state.epoch,
            "backbone": self.backbone.module.state_dict(),
            "head": self.head.state_dict(),
            "classes": self.classes,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": self.state.document(),
            "rng": rng_states(),
            "config": self.config.model_dump(mode="json"),
        }
        write_checkpoint(payload, path)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from ``path`` (a ``last.pt``): weights, optimiser, schedule, counters."""
        payload = read_checkpoint(path, self.device)
        if payload["classes"] != self.classes:
            raise ValueError(
                f"{path} was trained on {len(payload['classes'])} other identities; resume "
                "with the same data, split and configuration"
            )
        self.backbone.module.load_state_dict(payload["backbone"])
        self.head.load_state_dict(payload["head"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState.from_checkpoint(payload)
        restore_rng_states(payload["rng"])
        logger.info("resumed from %s after epoch %d", path, self.state.epoch)

    def restore_best(self) -> None:
        """Load the best epoch's backbone weights (every rank)."""
        best = self.checkpoint_dir / BEST_CHECKPOINT
        self.dist.barrier()
        if not best.is_file():
            logger.warning("%s is missing: keeping the last epoch's weights", best)
            return
        payload = read_checkpoint(best, self.device)
        self.backbone.module.load_state_dict(payload["backbone"])

    # --- one epoch ------------------------------------------------------------------------

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return nullcontext()

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self._loader is not None
        self._sampler.set_epoch(epoch)
        self._dataset.set_epoch(epoch)
        bar = tqdm(
            self._loader,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        for batch, labels in bar:
            inputs = batch
            if batch.dim() == 4 and self.device.type == "cpu":
                inputs = batch.contiguous(memory_format=torch.channels_last)
            yield inputs.to(self.device, non_blocking=True), labels.to(self.device)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        set_modes(self.backbone.module, self.trainable, self.config.train.batchnorm)
        self.head.train()
        clip = self.config.optim.grad_clip
        loss_sum = correct = seen = 0.0
        for inputs, labels in self._batches(epoch):
            with self._autocast():
                logits = self.model(inputs, labels)
                loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(self.scaler.scale(loss))
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += float(loss.detach()) * labels.shape[0]
            # Predictions from the margin logits: a pessimistic training accuracy.
            correct += float((logits.detach().argmax(dim=1) == labels).sum())
            seen += labels.shape[0]
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "lr_backbone": float(lrs.get("backbone", lrs.get("backbone_no_decay", 0.0))),
            "lr_head": float(lrs["head"]),
        }

    def validate(self) -> tuple[str, float, ProtocolResult]:
        embeddings = self.embed_validation()
        result = validation_protocol(embeddings, self.val.identities, self.val.poses())
        name, value = headline_metric(result)
        return name, value, result

    # --- the run --------------------------------------------------------------------------

    def fit(self, resume_from: Path | None = None) -> FitResult:
        start = time.perf_counter()
        self._prepare()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        elif self.config.head.init == "centroids":
            self.head.init_from_centroids(self._initial_centroids().to(self.device))
        metric_name = self.state.metric_name
        if self.state.epoch == 0:
            untrained = dict.fromkeys(TRAIN_COLUMNS, math.nan)
            metric_name = self._record_epoch(0, untrained, started=time.perf_counter())
        stopped_early = False
        for epoch in range(self.state.epoch + 1, self.config.train.epochs + 1):
            if self.state.stale_epochs >= self.config.train.patience:
                stopped_early = True
                break
            started = time.perf_counter()
            train_row = self.train_epoch(epoch)
            metric_name = self._record_epoch(epoch, train_row, started=started)
        self.restore_best()
        return FitResult(
            metric_name=metric_name,
            best_metric=self.state.best_metric,
            best_epoch=self.state.best_epoch,
            epochs_run=self.state.epoch,
            stopped_early=stopped_early,
            history=self.state.history,
            seconds=time.perf_counter() - start,
            feature_cache=self.split is not None,
        )

    def _record_epoch(self, epoch: int, train_row: dict[str, float], *, started: float) -> str:
        """Validate (rank 0), share the metric, log the row, checkpoint; returns the metric's
        name (on ranks other than 0, the name last known)."""
        name, value, summary = self.state.metric_name, math.nan, {}
        if self.dist.is_main:
            name, value, result = self.validate()
            summary = flatten_protocol(result)
        (value,) = self.dist.broadcast_floats([value], self.device)
        improved = value > self.state.best_metric + MIN_IMPROVEMENT
        self.state.epoch, self.state.metric_name = epoch, name
        if improved:
            self.state.best_metric, self.state.best_epoch = value, epoch
            self.state.stale_epochs = 0
        elif epoch > 0:
            self.state.stale_epochs += 1
        row = {
            "epoch": float(epoch),
            **train_row,
            "val_metric": value,
            **summary,
            "seconds": time.perf_counter() - started,
        }
        self.state.history.append(row)
        if self.dist.is_main:
            append_csv(self.out_dir / METRICS_CSV, row)
            logger.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
            if improved:
                self.save_checkpoint(self.checkpoint_dir / BEST_CHECKPOINT)
            self.save_checkpoint(self.checkpoint_dir / LAST_CHECKPOINT)
        self.dist.barrier()
        return name
