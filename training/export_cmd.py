"""``python -m training export`` (a checkpoint -> ONNX + parity check + calibrated manifest),
and the export step every fine-tune ends with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.types import FloatArray
from training.base_model import resolve_base
from training.checkpoints import read_checkpoint
from training.config import FinetuneConfig, config_from_args
from training.data import build_cropper
from training.evaluate import embed_faces, evaluate_embeddings
from training.evaluation import all_pair_scores, manifest_thresholds
from training.face_sources import load_identity_faces, resolve_models_dir
from training.faces import FaceSet
from training.report import format_table
from training.run_files import SPLIT_FILE
from training.runtime import resolve_device
from training.torch_embed import TorchEmbedder


def source_label(config: FinetuneConfig, training: dict[str, Any]) -> str:
    """Where the faces came from, for the manifest's calibration sentence."""
    data = training.get("data")
    if isinstance(data, dict) and data.get("source") == "gallery":
        return (
            f"collection {data['collection']!r} of the gallery {data['gallery']} "
            "(its stored aligned crops, outliers left out)"
        )
    return str(config.data.data_dir)


def export_recognizer(
    module: torch.nn.Module,
    embedding_dim: int,
    *,
    out_dir: Path,
    config: FinetuneConfig,
    val: FaceSet,
    val_embeddings: FloatArray,
    base_model: str,
    training: dict[str, Any],
    metrics: dict[str, Any],
    source: str | None = None,
) -> tuple[Path, float]:
    """ONNX + parity on real validation faces + threshold calibrated on the validation
    identities' different-identity pairs + manifest. Returns (manifest path, min cosine).

    ``source`` says where the faces came from (default: the configuration's data)."""
    from training.export import MODEL_FILE, check_parity, export_onnx, write_manifest

    model_path = out_dir / MODEL_FILE
    export_onnx(module, model_path, opset=config.export.opset)
    picks = np.linspace(0, len(val) - 1, min(config.export.parity_faces, len(val))).astype(int)
    min_cosine = check_parity(
        module, model_path, val.crops[picks], min_cosine=config.export.parity_min_cosine
    )
    genuine, impostor = all_pair_scores(val_embeddings, val.identities)
    thresholds = manifest_thresholds(
        genuine,
        impostor,
        config.export.calibration_far,
        described_as=(
            f"the {len(val)} faces of the {len(set(val.identities))} validation identities "
            f"(held out from training) of {source or source_label(config, training)}, detector "
            f"{config.data.detector}, largest face"
            + (", flip-sum embeddings" if config.export.flip else "")
        ),
    )
    manifest = write_manifest(
        out_dir,
        onnx_path=model_path,
        name=config.export.name,
        base_model=base_model,
        thresholds=thresholds,
        embedding_dim=embedding_dim,
        flip=config.export.flip,
        training={**training, "parity_min_cosine": min_cosine},
        metrics=metrics,
    )
    return manifest, min_cosine


def run_export(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint: Path = args.checkpoint
    split_path: Path = args.split or checkpoint.parent.parent / SPLIT_FILE
    models_dir = resolve_models_dir(config.data.models_dir)
    cropper = build_cropper(config.data.detector, models_dir)
    assert config.data.data_dir is not None
    faces = load_identity_faces(
        config.data.data_dir, config, cropper, report_dir=None, progress=not args.no_progress
    )
    split_document = json.loads(split_path.read_text(encoding="utf-8"))
    val = faces.of_identities(split_document["val"])

    from training.backbone import load_backbone

    backbone = load_backbone(resolve_base(args.base, models_dir).onnx_path)
    payload = read_checkpoint(checkpoint, torch.device("cpu"))
    backbone.module.load_state_dict(payload["backbone"])
    embedder = TorchEmbedder(
        backbone.module,
        backbone.embedding_dim,
        device=resolve_device(config.train.device),
        flip=config.export.flip,
    )
    val_embeddings = embed_faces(
        embedder, val.crops, desc="validation", progress=not args.no_progress
    )
    _, summary = evaluate_embeddings(val_embeddings, val, None)
    manifest, min_cosine = export_recognizer(
        backbone.module,
        backbone.embedding_dim,
        out_dir=out_dir,
        config=config,
        val=val,
        val_embeddings=val_embeddings,
        base_model=backbone.source_ref,
        training={
            "checkpoint": str(checkpoint),
            "epoch": int(payload["epoch"]),
            "val_identities": len(split_document["val"]),
        },
        metrics={"validation": summary},
    )
    print(format_table({"exported": summary}))
    print(f"\nmanifest: {manifest} (parity min cosine {min_cosine:.6f})")
    return 0
