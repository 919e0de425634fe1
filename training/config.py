"""Fine-tuning configuration: one validated, typed document; its defaults are the recipe.

Read from a JSON or TOML file (``--config``), then overridden by command-line
options and ``--set section.field=value`` pairs. The resolved configuration is
written next to every run's outputs, so a run is reproducible from its folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# "last:K" trains the last K layer groups of the backbone (see ImportedBackbone.layer_groups).
_FREEZE_PATTERN = r"^(head|all|last:[1-9][0-9]*)$"


class ConfigError(ValueError):
    """A configuration file or override is unreadable or invalid; the message says which."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def default_cache_dir() -> Path:
    """Where aligned crops are cached: ``$XDG_CACHE_HOME/facerec/crops`` (never in the data)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facerec" / "crops"


class DataConfig(_Section):
    """Where the photos are, how faces are found, how identities are split."""

    data_dir: Path | None = Field(None, description="identity folders (set by --data)")
    models_dir: Path | None = Field(
        None, description="folder with the detector .onnx (default: $FACEREC_MODELS_DIR)"
    )
    detector: str = Field("scrfd_500m", description="the service's detector manifest")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    # An int >= 1 is a count of identities, a float in (0, 1) a fraction of them.
    val_identities: float = Field(0.3, gt=0)
    split_seed: int = 0
    min_images_per_identity: int = Field(2, ge=1)
    lfw_dir: Path | None = Field(None, description="LFW folder (pairs.txt) for a sanity check")


class AugmentConfig(_Section):
    """Photometric and mild geometric augmentation that keeps the 5-point alignment."""

    flip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal mirror")
    brightness: float = Field(0.2, ge=0, lt=1)
    contrast: float = Field(0.2, ge=0, lt=1)
    saturation: float = Field(0.2, ge=0, lt=1)
    blur: float = Field(0.2, ge=0, le=1, description="probability of a gaussian blur")
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    # Zoom about the crop centre; beyond a few percent the eyes leave the template.
    scale: float = Field(0.05, ge=0, le=0.05)


class HeadConfig(_Section):
    """Margin head: target logit s * (cos(m1 * theta + m2) - m3)."""

    kind: Literal["arcface", "cosface", "combined"] = "arcface"
    scale: float = Field(64.0, gt=0)
    margin: float = Field(0.5, ge=0, description="m2 for arcface, m3 for cosface")
    m1: float = Field(1.0, gt=0, description="combined only")
    m2: float = Field(0.3, ge=0, description="combined only")
    m3: float = Field(0.2, ge=0, description="combined only")
    easy_margin: bool = False
    # "centroids": class weights start at the base model's mean embedding per identity,
    # so the first steps do not push random-head gradients into a good backbone.
    init: Literal["centroids", "random"] = "centroids"

    def margins(self) -> tuple[float, float, float]:
        if self.kind == "arcface":
            return 1.0, self.margin, 0.0
        if self.kind == "cosface":
            return 1.0, 0.0, self.margin
        return self.m1, self.m2, self.m3


class OptimConfig(_Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr_head: float = Field(2e-3, gt=0)
    lr_backbone: float = Field(1e-4, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    warmup_epochs: float = Field(0.5, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="cosine floor, x base lr")
    grad_clip: float | None = Field(5.0, gt=0, description="max global grad norm; null: off")


class TrainConfig(_Section):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=2)
    freeze: str = Field(
        "last:7",
        pattern=_FREEZE_PATTERN,
        description="what trains: head | last:K (last K backbone groups) | all",
    )
    # "frozen": every BatchNorm keeps the base statistics (small fine-tuning sets give
    # poor batch statistics); "train": trainable groups update theirs.
    batchnorm: Literal["frozen", "train"] = "frozen"
    patience: int = Field(4, ge=1, description="epochs without improvement before stopping")
    val_metric: Literal["auto", "frontal_profile", "pairs"] = "auto"
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch CPU threads, 0 = all available cores")
    amp: bool = Field(True, description="mixed precision, used only on CUDA")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    num_workers: int = Field(0, ge=0)
    # Frozen-prefix cache (see training.prefix): with last:K or head and frozen BatchNorm,
    # the frozen layers run once per view instead of once per step.
    cache_features: bool = True
    feature_views: int = Field(4, ge=1, description="cached views: crop, mirror, augmented...")
    feature_dtype: Literal["float32", "float16"] = Field(
        "float16", description="cached prefix outputs: float16 halves the memory"
    )
    max_images_per_identity: int | None = Field(None, ge=1, description="subsample (tests)")


class ExportConfig(_Section):
    name: str = Field("finetuned", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    opset: int = Field(17, ge=11)
    flip: bool = Field(True, description="serve flip-sum embeddings (manifest augment.flip)")
    calibration_far: float = Field(1e-4, gt=0, lt=1)
    parity_faces: int = Field(32, ge=1)
    parity_min_cosine: float = Field(0.999, gt=0, le=1)


class GalleryConfig(_Section):
    """Training data from a service gallery (``finetune --gallery``); see
    ``training.gallery_data``. The gallery's location is a command-line argument only
    (a database URL may carry a password: it is never written to a run's files)."""

    collection: str = Field("default", min_length=1)
    min_faces: int = Field(4, ge=2, description="subjects with fewer vetted faces are left out")
    max_faces: int | None = Field(50, ge=2, description="faces per subject at most (sampled)")
    outlier_far: float = Field(
        1e-3, gt=0, lt=1, description="a face scoring below strangers at this FAR is left out"
    )
    # Subjects for the promotion gate (never trained on, never used to pick the epoch):
    # a count (>= 1) or a fraction of all subjects. data.val_identities then takes the
    # selection subjects from those left.
    held_out: float = Field(0.25, gt=0)
    photos_dir: Path | None = Field(
        None, description="the enrolled photos (CFP layout), to label poses by image sha256"
    )


class FinetuneConfig(_Section):
    data: DataConfig = DataConfig()
    gallery: GalleryConfig = GalleryConfig()
    augment: AugmentConfig = AugmentConfig()
    head: HeadConfig = HeadConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        low, high = self.augment.blur_sigma
        if not 0 < low <= high:
            raise ValueError(f"augment.blur_sigma must be 0 < low <= high, got {low}, {high}")
        if self.data.val_identities >= 1 and not float(self.data.val_identities).is_integer():
            raise ValueError("data.val_identities: a count must be whole, a fraction below 1")
        return self

    def freeze_last(self) -> int | None:
        """K of ``last:K``; 0 for ``head``; None for ``all``."""
        if self.train.freeze == "all":
            return None
        if self.train.freeze == "head":
            return 0
        return int(self.train.freeze.split(":", 1)[1])


def read_config_file(path: Path) -> dict[str, Any]:
    """A JSON (``.json``) or TOML (anything else) document as nested dicts."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid {path.suffix or 'TOML'}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"config {path} must hold a table/object at the top level")
    return document


def parse_assignment(assignment: str) -> tuple[list[str], Any]:
    """``"optim.lr_head=0.01"`` -> (["optim", "lr_head"], 0.01); values are JSON or text."""
    key, sep, raw = assignment.partition("=")
    if not sep or not re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key.strip()):
        raise ConfigError(f"override {assignment!r} must look like section.field=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # bare words: paths, "arcface", "last:2"
    return key.strip().split("."), value


def merge(document: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``document[path[0]][path[1]]... = value``, creating sections as needed."""
    node = document
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {key!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> FinetuneConfig:
    """File (optional) < ``overrides`` ({"train.epochs": 3}) < ``assignments`` ("a.b=v")."""
    document: dict[str, Any] = read_config_file(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            merge(document, dotted.split("."), value)
    for assignment in assignments or []:
        merge(document, *parse_assignment(assignment))
    try:
        return FinetuneConfig.model_validate(document)
    except ValidationError as exc:
        source = f" ({path})" if path is not None else ""
        raise ConfigError(f"invalid fine-tuning configuration{source}: {exc}") from exc


def dump_config(config: FinetuneConfig) -> str:
    """The resolved configuration as JSON (paths as strings), loadable with --config."""
    return config.model_dump_json(indent=2)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The configuration of a ``python -m training`` command: ``--config``, then its flags,
    then ``--set`` overrides."""
    overrides = {
        "data.data_dir": getattr(args, "data", None),
        "gallery.collection": getattr(args, "collection", None),
        "gallery.photos_dir": getattr(args, "photos", None),
        "data.models_dir": args.models_dir,
        "data.detector": args.detector,
        "data.cache_dir": args.cache_dir,
        "data.lfw_dir": getattr(args, "lfw", None),
        "data.val_identities": getattr(args, "val_identities", None),
        "train.epochs": getattr(args, "epochs", None),
        "train.freeze": getattr(args, "freeze", None),
        "train.batch_size": getattr(args, "batch_size", None),
        "train.seed": getattr(args, "seed", None),
        "train.device": getattr(args, "device", None),
        "optim.lr_backbone": getattr(args, "lr_backbone", None),
        "optim.lr_head": getattr(args, "lr_head", None),
        "head.kind": getattr(args, "head", None),
        "export.name": getattr(args, "name", None),
    }
    plain = {key: str(v) if isinstance(v, Path) else v for key, v in overrides.items()}
    return load_config(args.config, plain, args.set)
