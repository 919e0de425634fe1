"""Export a trained recognizer for the service: ONNX file, self-checks, manifest.

The order follows what the service trusts: ``export_onnx`` writes the file and
runs ``onnx.checker``; ``check_parity`` compares onnxruntime with PyTorch on real
aligned faces; ``write_manifest`` records the file's sha256 and every fact the
service needs (``app.inference.manifest.ModelManifest``), then loads it back.
The service runs the result with onnxruntime alone: no PyTorch at serve time.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

from app.inference.manifest import (
    Augment,
    ImportSteps,
    ModelManifest,
    Preprocess,
    RecognizerInput,
    Source,
    Thresholds,
    file_sha256,
    load_manifest,
)
from training.tensors import INPUT_SHAPE, PIXEL_MEAN, PIXEL_STD, faces_to_tensor

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
BATCH_AXIS = "batch"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# Faces per session.run in the service: bounds peak memory on crowd photos. A float
# graph gives every face the same embedding whatever the batch (unlike an INT8 one).
MANIFEST_MAX_BATCH = 32
DEFAULT_MIN_COSINE = 0.999
LICENCE = (
    "Derived from InsightFace pretrained weights: non-commercial research use only, "
    "like the base model (see models/README.md)"
)
# onnxruntime severity 3 = ERROR: no per-run warnings while comparing outputs.
_ORT_LOG_ERROR = 3


class ExportCheckFailed(RuntimeError):
    """An exported file does not reproduce the PyTorch model; the message says by how much."""


def export_onnx(module: nn.Module, out_path: Path, *, opset: int = 17) -> None:
    """Write ``module`` (eval mode) as ONNX: ``input`` (batch, 3, 112, 112) -> ``embedding``.

    The batch axis is dynamic (named ``batch``); BatchNorm folds into the
    convolutions. The module's own train/eval mode is restored afterwards.
    """
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which
            # needs onnxscript; this one is complete for these networks and needs nothing.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                module,
                (torch.zeros(2, *INPUT_SHAPE, device=device),),
                str(out_path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    onnx.checker.check_model(onnx.load_model(str(out_path)), full_check=True)


def check_parity(
    module: nn.Module,
    onnx_path: Path,
    faces: NDArray[np.uint8],
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
    max_batch: int | None = None,
) -> float:
    """Smallest cosine between PyTorch (eval mode) and onnxruntime embeddings of ``faces``.

    ``faces``: (N, 112, 112, 3) uint8 RGB aligned crops. ``max_batch`` runs the ONNX
    file that many faces at a time (1 for a dynamically quantised file, whose
    activation scales depend on the whole batch). Raises ``ExportCheckFailed``
    below ``min_cosine``.
    """
    if faces.ndim != 4 or faces.shape[1:] != (*INPUT_SHAPE[1:], INPUT_SHAPE[0]):
        raise ValueError(f"faces must be (N, 112, 112, 3) uint8 RGB, got {faces.shape}")
    inputs = faces_to_tensor(faces)
    reference = _torch_embeddings(module, inputs)
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_LOG_ERROR
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    step = max_batch or len(faces)
    pixels = inputs.numpy()
    exported = np.concatenate(
        [
            np.asarray(session.run(None, {input_name: pixels[start : start + step]})[0])
            for start in range(0, len(pixels), step)
        ]
    )
    cosines = _cosines(reference, exported.reshape(len(faces), -1))
    worst = float(cosines.min())
    if worst < min_cosine:
        raise ExportCheckFailed(
            f"{onnx_path.name}: onnxruntime and PyTorch embeddings differ, min cosine "
            f"{worst:.6f} < {min_cosine} (face {int(cosines.argmin())} of {len(faces)})"
        )
    return worst


def _torch_embeddings(module: nn.Module, inputs: torch.Tensor) -> NDArray[np.float32]:
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            output = module(inputs.to(device))
    finally:
        module.train(was_training)
    return np.asarray(output.float().cpu().numpy(), dtype=np.float32)


def _cosines(first: NDArray[np.float32], second: NDArray[np.float32]) -> NDArray[np.float64]:
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return np.asarray((first * second).sum(axis=1) / np.maximum(norms, 1e-12), np.float64)


def write_manifest(
    out_dir: Path,
    *,
    onnx_path: Path,
    name: str,
    base_model: str,
    thresholds: Mapping[str, object],
    embedding_dim: int,
    flip: bool,
    training: Mapping[str, object],
    metrics: Mapping[str, object],
) -> Path:
    """Write ``out_dir/manifest.json`` for the ONNX file in ``out_dir``; returns its path.

    ``thresholds``: ``{"match", "far", "calibration", "by_far"}`` as in
    ``app.inference.manifest.Thresholds``. ``training`` and ``metrics`` must be
    JSON-serialisable (numpy scalars and arrays are converted). The written file
    is loaded back with the service's own validation before returning.
    """
    onnx_path, out_dir = onnx_path.resolve(), out_dir.resolve()
    if onnx_path.parent != out_dir:
        raise ValueError(f"{onnx_path} must be in {out_dir}: the manifest names it relatively")
    manifest = ModelManifest(
        name=name,
        kind="recognizer",
        family="arcface",
        file=onnx_path.name,
        sha256=file_sha256(onnx_path),
        input=RecognizerInput(
            name=INPUT_NAME, size=(INPUT_SHAPE[2], INPUT_SHAPE[1]), max_batch=MANIFEST_MAX_BATCH
        ),
        preprocess=Preprocess(mean=(PIXEL_MEAN,) * 3, std=(PIXEL_STD,) * 3, color_order="RGB"),
        embedding_dim=embedding_dim,
        thresholds=Thresholds.model_validate(_jsonable(thresholds)),
        import_steps=ImportSteps(dequantize=False, fix_dynamic_shapes=True),
        augment=Augment(flip=flip),
        licence=LICENCE,
        source=Source(notes=f"fine-tuned by facerec's training package from {base_model}"),
        base_model=base_model,
        training=_jsonable(training),
        metrics=_jsonable(metrics),
    )
    path = out_dir / MANIFEST_FILE
    path.write_text(
        json.dumps(manifest.model_dump(mode="json", exclude={"detector"}), indent=2) + "\n", "utf-8"
    )
    load_manifest(path)
    return path


def _jsonable(value: Mapping[str, object]) -> dict[str, object]:
    """A JSON round trip: numpy values become plain ones, anything else fails here."""

    def plain(item: object) -> object:
        if isinstance(item, np.generic | np.ndarray):
            return item.tolist()
        if isinstance(item, Path):
            return str(item)
        raise TypeError(f"{type(item).__name__} is not JSON-serialisable: {item!r}")

    result: dict[str, object] = json.loads(json.dumps(dict(value), default=plain))
    return result
