"""``python -m training distill``: a one-pass student of the flip-sum recognizer, trained on
real CFP crops, exported, and embedded by the service's own loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.dependencies import require

torch = require("torch", "the [train] extra")

from app.inference.loader import build_embedder, load_model  # noqa: E402
from app.inference.manifest import load_manifest  # noqa: E402
from app.inference.session import RuntimeOptions  # noqa: E402
from tests.training.faces import aligned_faces, service_detector  # noqa: E402
from training.backbone import load_backbone  # noqa: E402
from training.cli import main  # noqa: E402
from training.distill import DistillConfig, distill  # noqa: E402
from training.torch_embed import TorchEmbedder  # noqa: E402

IDENTITIES = [f"{i:03d}" for i in range(31, 39)]  # 8 CFP identities


@pytest.fixture(scope="module")
def crops(data_root: Path, models_dir: Path) -> np.ndarray:
    """Aligned crops of 8 CFP identities (4 frontal, 2 profile photos each)."""
    detector = service_detector(models_dir)
    faces = []
    for identity in IDENTITIES:
        for pose, count in (("frontal", 4), ("profile", 2)):
            for number in range(1, count + 1):
                path = data_root / "cfp" / "images" / identity / pose / f"{number:02d}.jpg"
                faces += aligned_faces(detector, path, limit=1)
    return np.stack(faces)


def mirror_agreement(module: torch.nn.Module, faces: np.ndarray) -> float:
    """Mean cos between one-pass embeddings of the crops and of their mirror images."""
    embedder = TorchEmbedder(module, 512, device=torch.device("cpu"), flip=False)
    first = embedder.embed(faces)
    second = embedder.embed(np.ascontiguousarray(faces[:, :, ::-1]))
    return float((first * second).sum(axis=1).mean())


def flip_sum_agreement(student: torch.nn.Module, base: torch.nn.Module, faces: np.ndarray) -> float:
    """Mean cos between one pass of ``student`` and the base model's flip-sum embedding."""
    one = TorchEmbedder(student, 512, device=torch.device("cpu"), flip=False).embed(faces)
    target = TorchEmbedder(base, 512, device=torch.device("cpu"), flip=True).embed(faces)
    return float((one * target).sum(axis=1).mean())


def test_the_student_learns_the_flip_sum_on_its_training_faces(crops: np.ndarray, models_dir: Path):
    backbone = load_backbone(models_dir / "w600k_mbf_int8.onnx")
    # The epoch kept is chosen on the training faces themselves here: on so few faces a
    # held-out set would (rightly) keep the base, and this test is about the fitting.
    train = crops[:36]
    result = distill(
        backbone,
        train,
        train,
        DistillConfig(train_last=3, epochs=4, lr=3e-4, batch_size=8),
        device=torch.device("cpu"),
        progress=False,
    )
    base = backbone.module
    before = flip_sum_agreement(base, base, train)
    after = flip_sum_agreement(result.module, base, train)
    assert after > before + 0.002, (before, after)
    assert mirror_agreement(result.module, train) > mirror_agreement(base, train)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.history[-1].loss < result.history[0].loss
    # The frozen prefix is the base's, untouched: only the last 3 groups changed.
    trained = dict(result.module.named_parameters())
    assert torch.equal(trained["prefix.conv_0.weight"], base.get_submodule("conv_0").weight)
    assert not torch.equal(trained["suffix.linear_0.weight"], base.get_submodule("linear_0").weight)


def test_distill_refuses_a_cut_outside_the_network(crops: np.ndarray, models_dir: Path):
    backbone = load_backbone(models_dir / "w600k_mbf_int8.onnx")
    with pytest.raises(ValueError, match="train_last"):
        distill(
            backbone,
            crops[:4],
            crops[4:8],
            DistillConfig(train_last=len(backbone.group_names)),
            device=torch.device("cpu"),
            progress=False,
        )


def test_cli_exports_a_one_pass_manifest_the_service_embeds_with(
    data_root: Path, models_dir: Path, tmp_path: Path, crops: np.ndarray
):
    data = tmp_path / "cfp"
    for identity in IDENTITIES:
        for pose, count in (("frontal", 3), ("profile", 2)):
            target = data / identity / pose
            target.mkdir(parents=True)
            for number in range(1, count + 1):
                source = data_root / "cfp" / "images" / identity / pose / f"{number:02d}.jpg"
                shutil.copy(source, target)
    out = tmp_path / "onepass"
    code = main(
        [
            "distill",
            "--data",
            str(data),
            "--out",
            str(out),
            "--val-identities",
            "4",
            "--epochs",
            "2",
            "--train-last",
            "2",
            "--batch-size",
            "8",
            "--models-dir",
            str(models_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ]
    )
    assert code == 0
    manifest = load_manifest(out / "manifest.json")
    assert manifest.name == "w600k_mbf_int8_onepass"
    assert manifest.augment.flip is False
    assert manifest.base_model is not None
    assert manifest.base_model.startswith("w600k_mbf_int8")
    assert manifest.training is not None
    assert manifest.training["train_identities"] == 4
    assert len(manifest.training["held_out_identities"]) == 4
    report = json.loads((out / "distill.json").read_text(encoding="utf-8"))
    assert report["history"]
    assert report["held_out_cosine_to_flip_sum"]["base_one_pass"] > 0.9

    # The service loads it (one pass per face: augment.flip is off) and embeds with it.
    model = load_model(
        str(out / "manifest.json"),
        "recognizer",
        models_dir=models_dir,
        catalog_dir=None,
        options=RuntimeOptions(),
    )
    embedder = build_embedder(model)
    served = embedder.embed(crops[:6])
    assert served.shape == (6, 512)
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    # One pass of the exported file (onnxruntime, straight): a flip-sum would be ~0.986 off.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = ((crops[:6].astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    (direct,) = session.run(None, {session.get_inputs()[0].name: inputs})
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    assert np.all((served * direct).sum(axis=1) > 0.9999)
