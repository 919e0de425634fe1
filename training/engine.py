"""The training loop: freeze policy, optimiser, schedule, AMP, DDP, early stopping, checkpoints.

One ``Trainer`` fits a backbone plus a margin head on the training identities
and, after every epoch, measures the validation protocol with flip-sum
embeddings (the way the service embeds). The best epoch's backbone is kept; an
epoch 0 row measures the untouched base model, so a fine-tune that never beats
the base returns the base weights.

Frozen-prefix cache: when only the last layer groups train (``last:K``, BatchNorm
frozen), everything before them is a fixed function. Its output is computed
once for a few views of every face (the crop, its mirror, random augmentations)
and the epochs run only the trainable rest: on a CPU, where a MobileFaceNet
forward pass costs ~10 ms a face, this is what makes several epochs affordable.
``train.feature_views`` views are drawn from per epoch instead of a fresh
augmentation; ``train.cache_features=false`` trains on images end to end.

Reproducibility: the order of the samples, the views and every augmentation
are functions of (seed, epoch, index), so a run resumed from
``checkpoints/last.pt`` takes the same steps as one that never stopped. Under
``torchrun`` with WORLD_SIZE > 1 the model runs in DistributedDataParallel;
only rank 0 evaluates and writes.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from numpy.typing import NDArray
from torch import fx, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from app.core.types import FloatArray
from app.inference.arcface import l2_normalize
from training.config import AugmentConfig, FinetuneConfig, OptimConfig
from training.data import FaceDataset, augment_face
from training.evaluate import embed_faces
from training.evaluation import ProtocolResult, headline_metric, validation_protocol
from training.faces import FaceSet
from training.heads import MarginHead, build_head
from training.tensors import faces_to_tensor, sum_views, views

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_CSV = "metrics.csv"
# Columns of the per-epoch log that come from training (NaN in the epoch 0 row).
TRAIN_COLUMNS = ("train_loss", "train_accuracy", "lr_backbone", "lr_head")
# A metric must beat the best so far by more than this to count as an improvement.
MIN_IMPROVEMENT = 1e-6
# Faces per forward pass outside training: small batches stay in the CPU caches
# (measured ~10 ms a face at 8-16, several times slower at 64 on a 2-core CPU).
INFERENCE_BATCH = 16


FEATURE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class Backbone(Protocol):
    """What the trainer needs of ``training.backbone.ImportedBackbone``."""

    @property
    def module(self) -> nn.Module: ...

    @property
    def embedding_dim(self) -> int: ...

    def layer_groups(self) -> list[nn.Module]: ...


# --- devices, seeds, processes ------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Join the process group torchrun describes in the environment, if any."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world_size=world_size, local_rank=local_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_floats(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's ``values`` on every rank."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return [float(v) for v in tensor.tolist()]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# --- embeddings through a PyTorch module --------------------------------------------------


def _run_module(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward in small chunks; channels-last input on CPU (faster convolutions)."""
    outputs = []
    for start in range(0, batch.shape[0], INFERENCE_BATCH):
        chunk = batch[start : start + INFERENCE_BATCH]
        if chunk.device.type == "cpu" and chunk.dim() == 4:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        outputs.append(module(chunk).float())
    return torch.cat(outputs)


class TorchEmbedder:
    """The service's ``Embedder`` shape over a PyTorch backbone: crops -> unit-norm vectors,
    optionally flip-sum (the embedding of a crop plus that of its mirror image)."""

    def __init__(
        self, module: nn.Module, dim: int, *, device: torch.device, flip: bool = True
    ) -> None:
        self.module = module
        self.dim = dim
        self.device = device
        self.flip = flip

    @torch.no_grad()
    def embed(self, aligned_faces: NDArray[np.uint8]) -> FloatArray:
        if aligned_faces.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        was_training = self.module.training
        self.module.eval()
        try:
            batch = faces_to_tensor(aligned_faces).to(self.device)
            embeddings = sum_views([_run_module(self.module, v) for v in views(batch, self.flip)])
        finally:
            self.module.train(was_training)
        return l2_normalize(embeddings.cpu().numpy().astype(np.float32))


def class_centroids(
    embeddings: FloatArray, labels: NDArray[np.int64], classes: int
) -> torch.Tensor:
    """Mean unit-norm embedding of each class (the head's starting weights)."""
    sums = np.zeros((classes, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, embeddings)
    return torch.from_numpy(l2_normalize(sums.astype(np.float32)))


# --- the frozen prefix --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SplitModule:
    """``suffix(prefix(x)) == module(x)``; both share the module's layers (and parameters)."""

    prefix: fx.GraphModule
    suffix: fx.GraphModule


def _live_after(nodes: list[fx.Node], position: int) -> list[fx.Node]:
    """Values defined at or before ``nodes[position]`` and used after it (constants aside)."""
    index = {node: i for i, node in enumerate(nodes)}
    return [
        node
        for node in nodes[: position + 1]
        if node.op != "get_attr" and any(index[user] > position for user in node.users)
    ]


def _copy_nodes(
    module: fx.GraphModule, nodes: list[fx.Node], env: dict[fx.Node, fx.Node], graph: fx.Graph
) -> None:
    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:  # a constant defined on the other side of the cut
            if node.op != "get_attr":
                raise ValueError(f"{node.name} crosses the cut: not a single-tensor boundary")
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    for node in nodes:
        env[node] = graph.node_copy(node, lookup)


def split_before(module: nn.Module, first_trainable: nn.Module) -> SplitModule | None:
    """Cut an fx graph where one tensor is live, as late as possible before the first layer
    of ``first_trainable``; None when ``module`` is not an fx graph (no cache then)."""
    if not isinstance(module, fx.GraphModule):
        return None
    targets = {id(m) for m in first_trainable.modules()}
    nodes = list(module.graph.nodes)
    first = next(
        (
            i
            for i, node in enumerate(nodes)
            if node.op == "call_module" and id(module.get_submodule(str(node.target))) in targets
        ),
        None,
    )
    if first is None:
        raise ValueError("the first trainable group is not called by the backbone graph")
    cut = next((p for p in range(first - 1, -1, -1) if len(_live_after(nodes, p)) == 1), None)
    if cut is None:
        return None
    (boundary,) = _live_after(nodes, cut)
    prefix_graph, suffix_graph = fx.Graph(), fx.Graph()
    prefix_env: dict[fx.Node, fx.Node] = {}
    _copy_nodes(module, nodes[: cut + 1], prefix_env, prefix_graph)
    prefix_graph.output(prefix_env[boundary])
    suffix_env = {boundary: suffix_graph.placeholder("features")}
    _copy_nodes(module, nodes[cut + 1 :], suffix_env, suffix_graph)
    prefix, suffix = fx.GraphModule(module, prefix_graph), fx.GraphModule(module, suffix_graph)
    for part in (prefix, suffix):
        part.graph.eliminate_dead_code()
        part.graph.lint()
        part.recompile()
    return SplitModule(prefix, suffix)


@torch.no_grad()
def prefix_features(
    prefix: nn.Module,
    crops: NDArray[np.uint8],
    *,
    views: int,
    augment: AugmentConfig,
    seed: int,
    device: torch.device,
    desc: str,
    progress: bool,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(views, N, ...) prefix outputs: view 0 the crop, 1 its mirror, then augmentations
    drawn from (seed, view, index). Kept on the CPU in ``dtype`` (float16 halves the
    cache; its 11-bit mantissa is far finer than the augmentation noise), written into
    one preallocated tensor (no second copy at the end)."""
    prefix.eval()
    cache: torch.Tensor | None = None
    for view in range(views):
        bar = tqdm(
            range(0, crops.shape[0], INFERENCE_BATCH),
            desc=f"{desc} view {view + 1}/{views}",
            unit="batch",
            disable=not progress,
            mininterval=2,
        )
        for start in bar:
            faces = crops[start : start + INFERENCE_BATCH]
            if view == 1:
                faces = faces[:, :, ::-1]
            elif view >= 2:
                faces = np.stack(
                    [
                        augment_face(
                            face, np.random.default_rng((seed, 1_000_000 + view, i)), augment
                        )
                        for i, face in enumerate(faces, start=start)
                    ]
                )
            outputs = _run_module(prefix, faces_to_tensor(faces).to(device)).cpu()
            if cache is None:
                cache = torch.empty((views, crops.shape[0], *outputs.shape[1:]), dtype=dtype)
            cache[view, start : start + outputs.shape[0]] = outputs.to(dtype)
    if cache is None:
        raise ValueError("no faces to compute prefix features of")
    return cache


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


# --- what trains ------------------------------------------------------------------------


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


@dataclass(slots=True)
class TrainState:
    epoch: int = 0  # last completed epoch (0: nothing trained yet)
    metric_name: str = "val_metric"
    best_metric: float = -math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


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
        self.split = self._split()
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
        total = self.steps_per_epoch * config.train.epochs
        warmup = round(config.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: warmup_cosine(step, warmup, total, config.optim.min_lr_ratio),
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

    def _split(self) -> SplitModule | None:
        config = self.config.train
        if not config.cache_features or config.batchnorm != "frozen":
            return None
        if self.config.freeze_last() is None:
            return None
        if not self.trainable:  # head only: the whole backbone is the frozen prefix
            module = self.backbone.module
            if not isinstance(module, fx.GraphModule):
                return None
            identity = fx.Graph()
            identity.output(identity.placeholder("features"))
            return SplitModule(module, fx.GraphModule(module, identity))
        return split_before(self.backbone.module, self.trainable[0])

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
            features = prefix_features(
                self.split.prefix,
                self.train_faces.crops,
                views=config.feature_views,
                augment=self.config.augment,
                seed=config.seed,
                device=self.device,
                desc="train features",
                progress=self.progress,
                dtype=FEATURE_DTYPES[config.feature_dtype],
            )
            dataset = FeatureDataset(features, self.labels, config.seed)
            if self.dist.is_main:
                self._val_features = prefix_features(
                    self.split.prefix,
                    self.val.crops,
                    views=2 if self.config.export.flip else 1,
                    augment=self.config.augment,
                    seed=config.seed,
                    device=self.device,
                    desc="val features",
                    progress=self.progress,
                    dtype=FEATURE_DTYPES[config.feature_dtype],
                )
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

    @torch.no_grad()
    def _suffix_embeddings(self, features: torch.Tensor) -> FloatArray:
        """Sum over views 0 (and 1, the mirror) of the suffix outputs, normalised."""
        assert self.split is not None
        suffix = self.split.suffix
        was_training = suffix.training
        suffix.eval()
        try:
            total = torch.zeros(0)
            for view in features:
                outputs = torch.cat(
                    [
                        _run_module(suffix, view[start : start + 256].float().to(self.device)).cpu()
                        for start in range(0, view.shape[0], 256)
                    ]
                )
                total = outputs if total.numel() == 0 else total + outputs
        finally:
            suffix.train(was_training)
        return l2_normalize(total.numpy().astype(np.float32))

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

    @torch.no_grad()
    def embed_base_and_tuned(
        self, crops: NDArray[np.uint8], *, desc: str = "embed"
    ) -> tuple[FloatArray, FloatArray]:
        """Flip-sum unit-norm embeddings of ``crops`` by the base and the fine-tuned model.

        With the frozen-prefix cache the prefix runs once for both (they share it).
        """
        flip = self.config.export.flip
        base_parts: list[FloatArray] = []
        tuned_parts: list[FloatArray] = []
        chunk = INFERENCE_BATCH * 8
        for start in tqdm(
            range(0, crops.shape[0], chunk), desc=desc, unit="chunk", disable=not self.progress
        ):
            faces = crops[start : start + chunk]
            inputs = views(faces_to_tensor(faces).to(self.device), flip)
            if self.split is not None:
                self.split.prefix.eval()
                inputs = [_run_module(self.split.prefix, batch) for batch in inputs]
            for module, parts in ((self.base_trained, base_parts), (self.model_part, tuned_parts)):
                was_training = module.training
                module.eval()
                outputs = [_run_module(module, batch) for batch in inputs]
                module.train(was_training)
                total = sum_views(outputs)
                parts.append(total.cpu().numpy().astype(np.float32))
        return l2_normalize(np.concatenate(base_parts)), l2_normalize(np.concatenate(tuned_parts))

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
            "state": {
                "metric_name": self.state.metric_name,
                "best_metric": self.state.best_metric,
                "best_epoch": self.state.best_epoch,
                "stale_epochs": self.state.stale_epochs,
                "history": self.state.history,
            },
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
            "config": self.config.model_dump(mode="json"),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(payload, partial)
        os.replace(partial, path)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from ``path`` (a ``last.pt``): weights, optimiser, schedule, counters."""
        payload = torch.load(path, map_location=self.device, weights_only=False)
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
        saved = payload["state"]
        self.state = TrainState(
            epoch=int(payload["epoch"]),
            metric_name=str(saved["metric_name"]),
            best_metric=float(saved["best_metric"]),
            best_epoch=int(saved["best_epoch"]),
            stale_epochs=int(saved["stale_epochs"]),
            history=list(saved["history"]),
        )
        random.setstate(payload["rng"]["python"])
        np.random.set_state(payload["rng"]["numpy"])
        torch.set_rng_state(payload["rng"]["torch"].cpu())
        logger.info("resumed from %s after epoch %d", path, self.state.epoch)

    def restore_best(self) -> None:
        """Load the best epoch's backbone weights (every rank)."""
        best = self.checkpoint_dir / BEST_CHECKPOINT
        self.dist.barrier()
        if not best.is_file():
            logger.warning("%s is missing: keeping the last epoch's weights", best)
            return
        payload = torch.load(best, map_location=self.device, weights_only=False)
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


def flatten_protocol(result: ProtocolResult) -> dict[str, float]:
    """``{"frontal_profile_tar@1e-3": 0.91, ..., "rank1_profile_to_frontal": 0.97}``."""
    row: dict[str, float] = {}
    for name, verification in result.verification.items():
        for point in verification.points:
            row[f"{name}_tar@{point.label}"] = point.tar
    for name, value in result.rank1.items():
        row[f"rank1_{name}"] = value
    return row


def append_csv(path: Path, row: dict[str, float]) -> None:
    """Append a row; the header is written with the first row (or when the columns change)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(row)
    existing: list[str] | None = None
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            existing = next(csv.reader(handle), None)
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if existing != header:
            writer.writerow(header)
        writer.writerow([f"{row[key]:.6g}" for key in header])
