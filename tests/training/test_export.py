"""Export: ONNX file with a dynamic batch, parity with PyTorch on real faces, and a manifest
that the service loads and embeds with, without PyTorch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from tests.dependencies import require

torch = require("torch", "the [train] extra")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from torch import nn  # noqa: E402

from app.inference.arcface import l2_normalize  # noqa: E402
from app.inference.loader import build_embedder, load_model  # noqa: E402
from app.inference.manifest import file_sha256, load_manifest  # noqa: E402
from app.inference.session import RuntimeOptions  # noqa: E402
from tests.training.faces import aligned_faces, service_detector  # noqa: E402
from training.backbone import ImportedBackbone, load_backbone  # noqa: E402
from training.export import (  # noqa: E402
    MODEL_FILE,
    ExportCheckFailed,
    check_parity,
    export_onnx,
    write_manifest,
)
from training.tensors import faces_to_tensor as normalize_faces  # noqa: E402

THRESHOLDS = {
    "match": 0.356,
    "far": 1e-5,
    "calibration": "test value, not measured",
    "by_far": {"1e-4": 0.2994, "1e-5": 0.3556},
}


@pytest.fixture(scope="module")
def faces(models_dir: Path, photos: Path) -> NDArray[np.uint8]:
    """Every face of the shared photos, found and aligned by the service's own code."""
    detector = service_detector(models_dir)
    aligned = []
    for path in sorted(photos.iterdir()):
        aligned += aligned_faces(detector, path)
    return np.stack(aligned)


@pytest.fixture(scope="module")
def backbone(models_dir: Path) -> ImportedBackbone:
    return load_backbone(models_dir / "w600k_mbf_int8.onnx")


@pytest.fixture(scope="module")
def exported(backbone: ImportedBackbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imported MobileFaceNet exported from train mode, as a trainer would."""
    path = tmp_path_factory.mktemp("model") / MODEL_FILE
    backbone.module.train()
    export_onnx(backbone.module, path)
    return path


def run(path: Path, faces: NDArray[np.uint8]) -> NDArray[np.float32]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": normalize_faces(faces).numpy()})[0]


def test_export_writes_a_checked_file_with_a_named_dynamic_batch_axis(
    exported: Path, backbone: ImportedBackbone
) -> None:
    model = onnx.load_model(str(exported))
    onnx.checker.check_model(model, full_check=True)

    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    input_dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    output_dims = [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim]
    assert (graph_input.name, input_dims) == ("input", ["batch", 3, 112, 112])
    assert (graph_output.name, output_dims) == ("embedding", ["batch", 512])
    assert backbone.module.training  # the caller's mode is restored


def test_exported_file_runs_any_batch_and_each_face_is_independent_of_its_batch(
    exported: Path, faces: NDArray[np.uint8]
) -> None:
    one, five = run(exported, faces[:1]), run(exported, faces[:5])

    assert one.shape == (1, 512)
    assert five.shape == (5, 512)
    np.testing.assert_allclose(one[0], five[0], rtol=1e-4, atol=1e-4)


def test_exported_file_agrees_with_pytorch_on_real_faces(
    exported: Path, backbone: ImportedBackbone, faces: NDArray[np.uint8]
) -> None:
    backbone.module.train()
    worst = check_parity(backbone.module, exported, faces)

    print(f"export parity on {len(faces)} real faces: min cosine {worst:.7f}")
    assert worst >= 0.999
    assert backbone.module.training  # compared in eval mode, mode restored


def test_parity_check_fails_for_a_module_the_file_no_longer_matches(
    exported: Path, backbone: ImportedBackbone, faces: NDArray[np.uint8]
) -> None:
    changed = copy.deepcopy(backbone.module)
    first_conv = next(m for m in changed.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        first_conv.weight.mul_(-1)

    with pytest.raises(ExportCheckFailed, match="min cosine"):
        check_parity(changed, exported, faces[:4])


@pytest.fixture(scope="module")
def manifest_path(exported: Path) -> Path:
    return write_manifest(
        exported.parent,
        onnx_path=exported,
        name="mbf_finetuned_test",
        base_model="w600k_mbf_int8 (7caa7fb0ad6c37b3)",
        thresholds=THRESHOLDS,
        embedding_dim=512,
        flip=False,
        training={"epochs": np.int64(2), "identities": 175, "data": "cfp frontal+profile"},
        metrics={"lfw_accuracy": np.float32(0.995), "tar_at_far": {"1e-3": 0.9}},
    )


def test_manifest_records_the_file_and_everything_the_service_needs(
    manifest_path: Path, exported: Path
) -> None:
    manifest = load_manifest(manifest_path)

    assert manifest_path.name == "manifest.json"
    assert (manifest.file, manifest.sha256) == ("model.onnx", file_sha256(exported))
    assert manifest.kind == "recognizer"
    assert manifest.input.name == "input"
    assert manifest.input.size == (112, 112)
    assert manifest.input.max_batch == 32  # type: ignore[union-attr]
    assert manifest.preprocess.mean == (127.5,) * 3
    assert manifest.preprocess.std == (127.5,) * 3
    assert manifest.preprocess.color_order == "RGB"
    assert manifest.embedding_dim == 512
    assert manifest.thresholds is not None
    assert manifest.thresholds.by_far == THRESHOLDS["by_far"]
    assert (manifest.import_steps.dequantize, manifest.import_steps.fix_dynamic_shapes) == (
        False,
        True,
    )
    assert not manifest.augment.flip
    assert "non-commercial" in manifest.licence
    assert manifest.base_model == "w600k_mbf_int8 (7caa7fb0ad6c37b3)"
    assert manifest.training is not None
    assert manifest.training["epochs"] == 2  # numpy values written as plain JSON
    assert json.loads(manifest_path.read_text())["metrics"]["lfw_accuracy"] == pytest.approx(0.995)


def test_the_service_loads_the_manifest_and_embeds_like_pytorch(
    manifest_path: Path, backbone: ImportedBackbone, faces: NDArray[np.uint8], tmp_path: Path
) -> None:
    model = load_model(
        str(manifest_path),
        "recognizer",
        models_dir=tmp_path,
        catalog_dir=None,
        options=RuntimeOptions(),
    )
    embeddings = build_embedder(model).embed(faces[:3])

    with torch.no_grad():
        pytorch = copy.deepcopy(backbone.module).eval()(normalize_faces(faces[:3]))
    reference = l2_normalize(pytorch.numpy())
    assert embeddings.shape == (3, 512)
    assert (embeddings * reference).sum(axis=1).min() >= 0.999


def test_manifest_refuses_a_model_file_outside_its_folder(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be in"):
        write_manifest(
            tmp_path,
            onnx_path=exported,
            name="x",
            base_model="x",
            thresholds=THRESHOLDS,
            embedding_dim=512,
            flip=False,
            training={},
            metrics={},
        )
