"""``python -m training distill``: a one-pass recognizer distilled from the base model's
flip-sum embeddings (``training.distill``), exported as ONNX + a manifest with
``augment.flip`` off: the service embeds each face once instead of twice."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.backbone import ImportedBackbone, load_backbone
from training.base_model import resolve_base
from training.config import FinetuneConfig, config_from_args
from training.data import FaceCropper, build_cropper
from training.distill import DistillConfig, DistillResult, distill
from training.evaluation import lfw_accuracy
from training.export_cmd import export_recognizer
from training.face_sources import load_identity_faces, load_lfw, resolve_models_dir
from training.faces import FaceSet, split_identities
from training.runtime import resolve_device, seed_everything
from training.torch_embed import TorchEmbedder

logger = logging.getLogger("training")

REPORT_FILE = "distill.json"
# The student replaces the flip-sum default, whose match threshold is at FAR 1e-5
# (models/manifests/w600k_mbf_int8.json); manifest_thresholds falls back to the smallest
# FAR the held-out pairs can measure.
CALIBRATION_FAR = 1e-5


def load_folders(
    folders: list[Path],
    config: FinetuneConfig,
    cropper: FaceCropper,
    out_dir: Path,
    progress: bool,
) -> FaceSet:
    """The aligned faces of every identity folder, identities named ``<folder>:<identity>``
    (two data sets may both have an identity ``001``)."""
    sets = []
    for folder in folders:
        faces = load_identity_faces(folder, config, cropper, report_dir=out_dir, progress=progress)
        label = folder.parent.name if folder.name == "images" else folder.name
        sets.append(
            FaceSet(
                crops=faces.crops,
                identities=tuple(f"{label}:{name}" for name in faces.identities),
                relpaths=faces.relpaths,
            )
        )
    return FaceSet(
        crops=np.concatenate([s.crops for s in sets]),
        identities=tuple(name for s in sets for name in s.identities),
        relpaths=tuple(path for s in sets for path in s.relpaths),
    )


def lfw_check(
    result: DistillResult, base: ImportedBackbone, config: FinetuneConfig, cropper: FaceCropper
) -> dict[str, Any]:
    """LFW 10-fold accuracy of the base (one pass, flip-sum) and the student (one pass)."""
    assert config.data.lfw_dir is not None
    pairs, faces = load_lfw(config.data.lfw_dir, config, cropper, progress=False)
    runs = {
        "base_one_pass": (base.module, False),
        "base_flip_sum": (base.module, True),
        "student_one_pass": (result.module, False),
    }
    cpu = torch.device("cpu")
    figures = {}
    for label, (module, flip) in runs.items():
        embedder = TorchEmbedder(module, base.embedding_dim, device=cpu, flip=flip)
        embeddings = embedder.embed(faces.crops)
        figures[label] = lfw_accuracy(pairs, dict(zip(faces.relpaths, embeddings, strict=True)))
        logger.info("LFW %s: %.4f", label, figures[label]["accuracy"])
    return figures


def run_distill(args: argparse.Namespace) -> int:
    # --data names several folders here; the configuration's data_dir is finetune's one.
    config = config_from_args(argparse.Namespace(**{**vars(args), "data": None}))
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    settings = DistillConfig(
        train_last=args.train_last,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    seed_everything(settings.seed)
    device = resolve_device(config.train.device)
    models_dir = resolve_models_dir(config.data.models_dir)
    base = resolve_base(args.base, models_dir)
    if not base.manifest.augment.flip:
        logger.warning("%s embeds one pass already: the student copies it", base.model_id)
    backbone = load_backbone(base.onnx_path)

    cropper = build_cropper(config.data.detector, models_dir)
    faces = load_folders(list(args.data), config, cropper, out_dir, progress)
    train_ids, val_ids = split_identities(
        faces.identities, config.data.val_identities, config.data.split_seed
    )
    train, val = faces.of_identities(train_ids), faces.of_identities(val_ids)
    logger.info(
        "distilling on %d faces of %d identities; %d faces of %d identities held out",
        len(train),
        len(train_ids),
        len(val),
        len(val_ids),
    )
    result = distill(backbone, train.crops, val.crops, settings, device=device, progress=progress)

    student = result.module.cpu().eval()
    cpu = torch.device("cpu")
    embedder = TorchEmbedder(student, backbone.embedding_dim, device=cpu, flip=False)
    metrics: dict[str, Any] = {
        "held_out_cosine_to_flip_sum": {
            "base_one_pass": round(result.base_val_cosine, 6),
            "student": round(max(r.val_cosine for r in result.history), 6),
        },
        "history": [
            {"epoch": r.epoch, "loss": round(r.loss, 6), "val_cosine": round(r.val_cosine, 6)}
            for r in result.history
        ],
    }
    if config.data.lfw_dir is not None:
        metrics["lfw"] = lfw_check(result, backbone, config, cropper)
    export = config.export.model_copy(
        update={
            "name": args.name or f"{base.manifest.name}_onepass",
            "flip": False,
            "calibration_far": CALIBRATION_FAR,
        }
    )
    manifest, min_cosine = export_recognizer(
        student,
        backbone.embedding_dim,
        out_dir=out_dir,
        config=config.model_copy(update={"export": export}),
        val=val,
        val_embeddings=embedder.embed(val.crops),
        base_model=backbone.source_ref,
        training={
            "recipe": "self-distillation of the base model's flip-sum embedding (one pass)",
            "base_manifest": base.model_id,
            "data": [str(d) for d in args.data],
            "train_faces": len(train),
            "train_identities": len(train_ids),
            "held_out_identities": val_ids,
            "best_epoch": result.best_epoch,
            "train_last": settings.train_last,
            "epochs": settings.epochs,
            "lr": settings.lr,
            "batch_size": settings.batch_size,
            "seed": settings.seed,
        },
        metrics=metrics,
        source=", ".join(str(d) for d in args.data),
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics["held_out_cosine_to_flip_sum"]))
    if "lfw" in metrics:
        print(json.dumps({k: v["accuracy"] for k, v in metrics["lfw"].items()}))
    print(f"manifest: {manifest} (parity min cosine {min_cosine:.6f}, epoch {result.best_epoch})")
    return 0
