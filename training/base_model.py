"""The base recognizer enters training through its manifest, as it enters the service.

``--base`` names a recognizer manifest (catalog name or path). Its preprocessing,
input size and embedding dim are checked against what the trainer implements, and its
file is found and sha256-verified exactly as the service does; the manifest's model id
is what the gallery of that model is bound to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.inference.catalog import resolve_manifest
from app.inference.manifest import ModelManifest, resolve_model_file
from training.config import ConfigError

# What training.tensors feeds the network (112x112 RGB, (x - 127.5) / 127.5); kept here
# as plain numbers so resolving a manifest needs no PyTorch.
TRAINED_INPUT = (112, 112)
TRAINED_MEAN = (127.5, 127.5, 127.5)
TRAINED_STD = (127.5, 127.5, 127.5)


@dataclass(frozen=True, slots=True)
class BaseModel:
    manifest: ModelManifest
    manifest_path: Path
    onnx_path: Path

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def dim(self) -> int:
        assert self.manifest.embedding_dim is not None  # recognizer manifests have one
        return self.manifest.embedding_dim


def resolve_base(ref: str, models_dir: Path) -> BaseModel:
    """The recognizer manifest ``ref`` and its verified file; ``ConfigError`` when it is
    not a recognizer the trainer can reproduce bit for bit at its input."""
    if ref.endswith(".onnx"):
        raise ConfigError(
            f"--base {ref}: pass the recognizer's manifest (a catalog name such as "
            "w600k_mbf_int8, or a manifest.json), not the .onnx: preprocessing, input size "
            "and dim come from the manifest"
        )
    manifest, manifest_path = resolve_manifest(ref, None)
    if manifest.kind != "recognizer":
        raise ConfigError(f"--base {ref}: a {manifest.kind} manifest, a recognizer is needed")
    size = tuple(manifest.input.size)
    preprocess = manifest.preprocess
    if (
        size != TRAINED_INPUT
        or tuple(preprocess.mean) != TRAINED_MEAN
        or tuple(preprocess.std) != TRAINED_STD
        or preprocess.color_order != "RGB"
    ):
        raise ConfigError(
            f"--base {ref}: input {size}, mean {preprocess.mean}, std {preprocess.std}, "
            f"{preprocess.color_order}; the trainer implements ArcFace's 112x112 RGB, "
            "(x - 127.5) / 127.5"
        )
    path = resolve_model_file(manifest, [manifest_path.parent, models_dir])
    return BaseModel(manifest=manifest, manifest_path=manifest_path, onnx_path=path)
