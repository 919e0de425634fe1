"""``python -m training {finetune,evaluate,export,reembed}``: the offline training CLI.

finetune  data -> crops -> split -> backbone + margin head -> epochs -> ONNX + manifest
evaluate  any recognizer manifests (the service's onnxruntime path) on held-out identities
export    a checkpoint -> ONNX + parity check + calibrated manifest
reembed   a gallery's stored aligned crops -> a new gallery for another recognizer
"""

from __future__ import annotations

import sys

# Before anything imports PyTorch: without the train extra, say so in one line (exit 2).
try:
    import torch
except ModuleNotFoundError:
    sys.stderr.write(
        "python -m training: error: PyTorch is not installed; install the train extra: "
        "pip install 'facerec[train]' (or scripts/setup.sh cpu train)\n"
    )
    raise SystemExit(2) from None

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from app.config import available_cores
from app.core.types import FloatArray, NewFace
from app.errors import FaceRecError
from app.gallery import open_gallery
from app.gallery.embedded.generations import EmbeddedGenerations
from app.inference.loader import build_embedder, load_model
from app.inference.manifest import file_sha256
from app.inference.session import RuntimeOptions
from training.base_model import BaseModel, resolve_base
from training.checkpoints import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT
from training.config import ConfigError, FinetuneConfig, dump_config, load_config
from training.data import (
    FaceCropper,
    build_cropper,
    cache_file,
    limit_per_identity,
    load_faces,
    scan_identities,
)
from training.evaluate import embed_faces
from training.evaluation import (
    LfwPair,
    ProtocolResult,
    all_pair_scores,
    lfw_accuracy,
    manifest_thresholds,
    read_lfw_pairs,
    validation_protocol,
)
from training.faces import FaceSet, split_identities
from training.report import format_table, plot_protocols, write_json
from training.runtime import Distributed, resolve_device
from training.torch_embed import TorchEmbedder
from training.trainer import Trainer

logger = logging.getLogger("training")

SPLIT_FILE = "split.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
NO_FACE_FILE = "no_face.txt"
REPORT_FILE = "report.txt"


# --- shared steps -----------------------------------------------------------------------------


def resolve_models_dir(value: Path | None) -> Path:
    chosen = value or (
        Path(os.environ["FACEREC_MODELS_DIR"]) if os.environ.get("FACEREC_MODELS_DIR") else None
    )
    if chosen is None or not chosen.is_dir():
        raise ConfigError(
            "the detector's .onnx folder is unknown: pass --models-dir or set FACEREC_MODELS_DIR"
        )
    return chosen


def load_identity_faces(
    data_dir: Path,
    config: FinetuneConfig,
    cropper: FaceCropper,
    *,
    report_dir: Path | None,
    progress: bool,
) -> FaceSet:
    """Every identity's aligned faces (cached), without identities that have too few."""
    records = limit_per_identity(scan_identities(data_dir), config.train.max_images_per_identity)
    loaded = load_faces(
        records,
        cropper,
        cache_file(config.data.cache_dir, cropper.detector_id, data_dir),
        progress=progress,
    )
    logger.info(
        "%s: %d photos, %d faces, %d without a face, %d unreadable, %d detected now",
        data_dir,
        len(records),
        len(loaded.faces),
        len(loaded.without_face),
        len(loaded.unreadable),
        loaded.detected,
    )
    if report_dir is not None and (loaded.without_face or loaded.unreadable):
        lines = [f"{r.relpath}\tno face" for r in loaded.without_face]
        lines += [f"{r.relpath}\t{why}" for r, why in loaded.unreadable]
        (report_dir / NO_FACE_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for name in loaded.faces.identities:
        counts[name] = counts.get(name, 0) + 1
    kept = [n for n, c in counts.items() if c >= config.data.min_images_per_identity]
    if len(kept) < len(counts):
        logger.info(
            "dropping %d identities with fewer than %d faces",
            len(counts) - len(kept),
            config.data.min_images_per_identity,
        )
    return loaded.faces.of_identities(kept)


def split_faces(faces: FaceSet, config: FinetuneConfig) -> tuple[FaceSet, FaceSet, dict[str, Any]]:
    train_ids, val_ids = split_identities(
        faces.identities, config.data.val_identities, config.data.split_seed
    )
    document = {"seed": config.data.split_seed, "train": train_ids, "val": val_ids}
    return faces.of_identities(train_ids), faces.of_identities(val_ids), document


def load_lfw(
    lfw_dir: Path, config: FinetuneConfig, cropper: FaceCropper, progress: bool
) -> tuple[list[LfwPair], FaceSet]:
    """LFW View 2 pairs and the faces of the photos they use (``lfw_dir/images``)."""
    pairs = read_lfw_pairs(lfw_dir / "pairs.txt")
    used = {name for pair in pairs for name in (pair.first, pair.second)}
    images = lfw_dir / "images"
    records = [r for r in scan_identities(images) if r.relpath in used]
    loaded = load_faces(
        records,
        cropper,
        cache_file(config.data.cache_dir, cropper.detector_id, images),
        progress=progress,
    )
    logger.info(
        "LFW: %d pairs, %d photos, %d without a face",
        len(pairs),
        len(records),
        len(loaded.without_face),
    )
    return pairs, loaded.faces


def evaluate_embeddings(
    embeddings: FloatArray,
    faces: FaceSet,
    lfw: tuple[list[LfwPair], FaceSet, FloatArray] | None,
) -> tuple[ProtocolResult, dict[str, Any]]:
    """Validation protocol (+ LFW when given) as (result, JSON-ready summary)."""
    result = validation_protocol(embeddings, faces.identities, faces.poses())
    summary = result.summary()
    if lfw is not None:
        pairs, lfw_faces, lfw_embeddings = lfw
        summary["lfw"] = lfw_accuracy(
            pairs, dict(zip(lfw_faces.relpaths, lfw_embeddings, strict=True))
        )
    return result, summary


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
) -> tuple[Path, float]:
    """ONNX + parity on real validation faces + threshold calibrated on the validation
    identities' different-identity pairs + manifest. Returns (manifest path, min cosine)."""
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
            f"(held out from training) of {source_label(config, training)}, detector "
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


# --- finetune -----------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
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


def resolve_resume(value: str | None, out_dir: Path) -> Path | None:
    if value is None:
        return None
    path = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT if value == "last" else Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    return path


def prepare_split(
    config: FinetuneConfig, out_dir: Path, distributed: Distributed, progress: bool
) -> tuple[FaceCropper, FaceSet, FaceSet, dict[str, Any]]:
    """Crops of every identity (rank 0 fills the cache first), split, written to ``out_dir``."""
    models_dir = resolve_models_dir(config.data.models_dir)
    assert config.data.data_dir is not None  # set from the required --data
    cropper = build_cropper(config.data.detector, models_dir)
    if not distributed.is_main:
        distributed.barrier()
    faces = load_identity_faces(
        config.data.data_dir,
        config,
        cropper,
        report_dir=out_dir if distributed.is_main else None,
        progress=progress,
    )
    if distributed.is_main:
        distributed.barrier()
    train, val, split_document = split_faces(faces, config)
    if distributed.is_main:
        (out_dir / CONFIG_FILE).write_text(dump_config(config) + "\n", encoding="utf-8")
        write_json(out_dir / SPLIT_FILE, split_document)
    logger.info(
        "split: %d train identities (%d faces), %d validation (%d faces)",
        len(split_document["train"]),
        len(train),
        len(split_document["val"]),
        len(val),
    )
    return cropper, train, val, split_document


def compare_base_and_tuned(
    trainer: Trainer, config: FinetuneConfig, cropper: FaceCropper, val: FaceSet, progress: bool
) -> tuple[dict[str, ProtocolResult], dict[str, dict[str, Any]], FloatArray]:
    """Validation protocol (and LFW) for the base and the fine-tuned model; also returns the
    fine-tuned validation embeddings (for calibration)."""
    base_val, tuned_val = trainer.embed_base_and_tuned(val.crops, desc="validation")
    lfw_base = lfw_tuned = None
    if config.data.lfw_dir is not None:
        pairs, lfw_faces = load_lfw(config.data.lfw_dir, config, cropper, progress)
        base_lfw, tuned_lfw = trainer.embed_base_and_tuned(lfw_faces.crops, desc="LFW")
        lfw_base, lfw_tuned = (pairs, lfw_faces, base_lfw), (pairs, lfw_faces, tuned_lfw)
    base_result, base_summary = evaluate_embeddings(base_val, val, lfw_base)
    tuned_result, tuned_summary = evaluate_embeddings(tuned_val, val, lfw_tuned)
    results = {"base": base_result, "fine-tuned": tuned_result}
    return results, {"base": base_summary, "fine-tuned": tuned_summary}, tuned_val


def prepare_gallery_split(
    config: FinetuneConfig, base: BaseModel, source: str, out_dir: Path, distributed: Distributed
) -> tuple[FaceCropper, FaceSet, FaceSet, dict[str, Any], dict[str, Any]]:
    """The gallery's vetted faces split three ways; split.json and outliers.json written."""
    from training.from_gallery import OUTLIERS_FILE, read_collection, split_gallery

    if distributed.enabled:
        raise ConfigError("finetune --gallery runs in one process (no torchrun)")
    cropper = build_cropper(config.data.detector, resolve_models_dir(config.data.models_dir))
    faces = read_collection(source, config.gallery.collection, model_id=base.model_id, dim=base.dim)
    split = split_gallery(faces, config, source)
    (out_dir / CONFIG_FILE).write_text(dump_config(config) + "\n", encoding="utf-8")
    write_json(out_dir / SPLIT_FILE, split.document)
    write_json(out_dir / OUTLIERS_FILE, {"outliers": split.outliers})
    summary = {**split.summary, "split_sha256": file_sha256(out_dir / SPLIT_FILE)}
    return cropper, split.train, split.selection, split.document, summary


def run_finetune(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = config_from_args(args)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    distributed = Distributed.from_env()
    progress = not args.no_progress and distributed.is_main
    base = resolve_base(args.base, resolve_models_dir(config.data.models_dir))
    data_summary: dict[str, Any] = {"source": "folders", "data": str(config.data.data_dir)}
    if args.gallery is not None:
        cropper, train, val, split_document, data_summary = prepare_gallery_split(
            config, base, args.gallery, out_dir, distributed
        )
    else:
        cropper, train, val, split_document = prepare_split(config, out_dir, distributed, progress)
    timings = {"data_s": time.perf_counter() - started}

    from training.backbone import load_backbone

    backbone = load_backbone(base.onnx_path)
    trainer = Trainer(
        config, backbone, train, val, out_dir, distributed=distributed, progress=progress
    )
    fit = trainer.fit(resume_from=resolve_resume(args.resume, out_dir))
    timings["train_s"] = fit.seconds
    logger.info(
        "best %s = %.4f at epoch %d of %d%s",
        fit.metric_name,
        fit.best_metric,
        fit.best_epoch,
        fit.epochs_run,
        " (stopped early)" if fit.stopped_early else "",
    )
    if not distributed.is_main:
        distributed.close()
        return 0

    mark = time.perf_counter()
    results, summaries, tuned_val = compare_base_and_tuned(trainer, config, cropper, val, progress)
    timings["evaluate_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    fit_document = {
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "stopped_early": fit.stopped_early,
        "selection_metric": fit.metric_name,
        "best_metric": fit.best_metric,
        "feature_cache": fit.feature_cache,
    }
    manifest, min_cosine = export_recognizer(
        backbone.module,
        backbone.embedding_dim,
        out_dir=out_dir,
        config=config,
        val=val,
        val_embeddings=tuned_val,
        base_model=backbone.source_ref,
        training={
            "base_sha256": backbone.source_sha256,
            "base_manifest": base.model_id,
            "data": {**data_summary, "split_sha256": file_sha256(out_dir / SPLIT_FILE)},
            "train_identities": len(split_document["train"]),
            "train_faces": len(train),
            "val_identities": len(split_document["val"]),
            "val_faces": len(val),
            **fit_document,
            "config": config.model_dump(mode="json"),
        },
        metrics={"validation": summaries["fine-tuned"], "base_validation": summaries["base"]},
    )
    plots = plot_protocols(results, out_dir)
    timings["export_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started
    table = format_table(summaries)
    write_json(
        out_dir / METRICS_FILE,
        {
            "base": summaries["base"],
            "finetuned": summaries["fine-tuned"],
            "timings": timings,
            "fit": fit_document,
            "parity_min_cosine": min_cosine,
            "manifest": str(manifest),
            "plots": [str(p) for p in plots],
            "command": sys.argv,
        },
    )
    (out_dir / REPORT_FILE).write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\nmanifest: {manifest}  (FACEREC_RECOGNIZER={manifest})")
    print("timings: " + ", ".join(f"{k}={v:.0f}s" for k, v in timings.items()))
    distributed.close()
    return 0


# --- evaluate -----------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    from training import evaluate_cmd

    config = config_from_args(args)
    models_dir = resolve_models_dir(config.data.models_dir)
    progress = not args.no_progress
    cropper = build_cropper(config.data.detector, models_dir)

    def folder_faces() -> FaceSet:
        assert config.data.data_dir is not None
        faces = load_identity_faces(
            config.data.data_dir, config, cropper, report_dir=None, progress=progress
        )
        if args.split is not None:
            split = json.loads(args.split.read_text(encoding="utf-8"))
            faces = faces.of_identities(split.get("held_out") or split["val"])
        return faces

    lfw = load_lfw(config.data.lfw_dir, config, cropper, progress) if config.data.lfw_dir else None
    return evaluate_cmd.run_evaluate(
        args, config, models_dir, folder_faces, lfw, threads=available_cores()
    )


# --- export -------------------------------------------------------------------------------


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
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
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


# --- reembed ------------------------------------------------------------------------------


def gallery_model(data_dir: Path) -> tuple[str, int]:
    """The (model id, dim) a gallery was created with, read without opening it for writing."""
    import sqlite3

    from app.gallery.embedded.schema import DB_FILENAME

    path = data_dir / DB_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no gallery at {data_dir} ({DB_FILENAME} missing)")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    return str(meta["model_id"]), int(meta["dim"])


def run_reembed(args: argparse.Namespace) -> int:
    """Copy every face that kept its aligned crop into a new gallery, embedded by the new
    recognizer; faces without a stored crop are listed and must be enrolled again."""
    from app.inference.image import decode_image

    models_dir = resolve_models_dir(args.models_dir)
    model = load_model(
        args.recognizer,
        "recognizer",
        models_dir=models_dir,
        catalog_dir=None,
        options=RuntimeOptions(intra_op_threads=available_cores()),
    )
    embedder = build_embedder(model)
    manifest = model.manifest
    assert manifest.embedding_dim is not None
    generations = EmbeddedGenerations(args.data_dir)
    source_dir = generations.gallery_dir(generations.active_number())  # after a live swap
    old_id, old_dim = gallery_model(source_dir)
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"{args.out} is not empty: re-embed into a new folder")
    copied = 0
    with (
        closing(open_gallery(data_dir=source_dir, model_id=old_id, dim=old_dim)) as old,
        closing(
            open_gallery(data_dir=args.out, model_id=manifest.model_id, dim=manifest.embedding_dim)
        ) as new,
    ):
        total = old.total_faces()
        batch: list[tuple[Any, bytes]] = []

        def flush() -> int:
            crops = np.stack(
                [
                    decode_image(png, max_bytes=1 << 24, max_pixels=1 << 20).pixels
                    for _, png in batch
                ]
            )
            embeddings = embedder.embed(crops)
            groups: dict[tuple[str, str], list[NewFace]] = {}
            for (record, png), embedding in zip(batch, embeddings, strict=True):
                groups.setdefault((record.collection, record.subject), []).append(
                    NewFace(
                        image_sha256=record.image_sha256,
                        bbox=record.bbox,
                        det_score=record.det_score,
                        embedding=embedding,
                        aligned_png=png,
                    )
                )
            for (collection, subject), faces in groups.items():
                new.add_faces(collection, subject, faces)
            return len(batch)

        for record, png in old.aligned_crops(args.collection):
            batch.append((record, png))
            if len(batch) == 64:
                copied += flush()
                batch = []
        if batch:
            copied += flush()
    keys_copied = copy_api_keys(args.data_dir, args.out)
    print(
        f"re-embedded {copied} of {total} faces from {old_id} into {args.out} "
        f"({manifest.model_id}); {total - copied} had no stored crop and need re-enrolling"
        + ("; API keys copied" if keys_copied else "")
    )
    return 0


def copy_api_keys(old_dir: Path, new_dir: Path) -> bool:
    """The service's API keys go with the gallery (SQLite's online backup: a consistent copy)."""
    import sqlite3

    from app.auth.store import KEYS_FILENAME

    source = old_dir / KEYS_FILENAME
    if not source.is_file():
        return False
    with (
        sqlite3.connect(f"file:{source}?mode=ro", uri=True) as old,
        sqlite3.connect(new_dir / KEYS_FILENAME) as new,
    ):
        old.backup(new)
    return True


# --- command line -------------------------------------------------------------------------


def _data_options(parser: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=data_required,
        help="folder of identity subfolders (photos anywhere below them)",
    )
    parser.add_argument("--config", type=Path, help="JSON or TOML configuration file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any configuration field (repeatable)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="folder with the detector .onnx (default: $FACEREC_MODELS_DIR)",
    )
    parser.add_argument("--detector", help="the service's detector manifest (default scrfd_500m)")
    parser.add_argument("--cache-dir", type=Path, help="aligned-crop cache folder")
    parser.add_argument("--lfw", type=Path, help="LFW folder (images/, pairs.txt) to check too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _gallery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gallery",
        metavar="DATA_DIR_OR_DATABASE_URL",
        help="train on a service gallery's enrolled faces instead of --data folders",
    )
    parser.add_argument("--collection", help="the gallery collection (default: default)")
    parser.add_argument(
        "--photos", type=Path, help="the enrolled photos (CFP layout): pose labels by sha256"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    finetune = commands.add_parser("finetune", help="fine-tune a recognizer, export it")
    finetune.add_argument(
        "--base", required=True, help="the pretrained recognizer's manifest (name or path)"
    )
    finetune.add_argument("--out", type=Path, required=True, help="output folder")
    _data_options(finetune, data_required=False)
    _gallery_options(finetune)
    finetune.add_argument("--val-identities", type=float, help="count (>=1) or fraction")
    finetune.add_argument("--epochs", type=int)
    finetune.add_argument("--freeze", help="head | last:K | all")
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--lr-backbone", type=float)
    finetune.add_argument("--lr-head", type=float)
    finetune.add_argument("--head", choices=["arcface", "cosface", "combined"])
    finetune.add_argument("--seed", type=int)
    finetune.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    finetune.add_argument("--name", help="model name in the manifest")
    finetune.add_argument(
        "--resume",
        nargs="?",
        const="last",
        help="continue from OUT/checkpoints/last.pt (or the given file)",
    )
    finetune.set_defaults(handler=run_finetune)

    evaluate = commands.add_parser("evaluate", help="evaluate recognizer manifests")
    evaluate.add_argument(
        "--recognizer",
        action="append",
        required=True,
        help="catalog name or manifest path (repeatable)",
    )
    evaluate.add_argument(
        "--split",
        type=Path,
        help="split.json: evaluate its held-out identities (its val ones when it has none)",
    )
    evaluate.add_argument("--out", type=Path, required=True)
    _data_options(evaluate, data_required=False)
    _gallery_options(evaluate)
    evaluate.add_argument(
        "--degrade", action="store_true", help="also evaluate camera-like degraded faces"
    )
    evaluate.add_argument(
        "--gallery-model",
        help="the recognizer the gallery was built with (default: the first --recognizer)",
    )
    evaluate.add_argument(
        "--gate",
        action="store_true",
        help="promotion gate: --recognizer SERVING --recognizer CANDIDATE; the decision goes "
        "into the candidate's manifest",
    )
    evaluate.add_argument(
        "--margin", type=float, default=0.005, help="gate: TAR@1e-3 gain needed (0.005 = 0.5 pt)"
    )
    evaluate.add_argument(
        "--lfw-tolerance", type=float, default=0.002, help="gate: LFW loss allowed (0.2 pt)"
    )
    evaluate.set_defaults(handler=run_evaluate)

    export = commands.add_parser("export", help="export a checkpoint as ONNX + manifest")
    export.add_argument("--base", required=True, help="the run's base recognizer manifest")
    export.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help=f"e.g. OUT/{CHECKPOINT_DIR}/{BEST_CHECKPOINT}",
    )
    export.add_argument("--split", type=Path, help="split.json (default: beside checkpoints/)")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--name", help="model name in the manifest")
    _data_options(export)
    export.set_defaults(handler=run_export)

    reembed = commands.add_parser("reembed", help="re-embed a gallery for another recognizer")
    reembed.add_argument("--data-dir", type=Path, required=True, help="the existing gallery")
    reembed.add_argument("--recognizer", required=True, help="catalog name or manifest path")
    reembed.add_argument("--out", type=Path, required=True, help="the new gallery folder")
    reembed.add_argument("--collection", help="only this collection")
    reembed.add_argument("--models-dir", type=Path)
    reembed.set_defaults(handler=run_reembed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in {"finetune", "evaluate"} and (args.data is None) == (
        getattr(args, "gallery", None) is None
    ):
        parser.error(f"{args.command}: pass exactly one of --data and --gallery")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        code: int = args.handler(args)
    except (ConfigError, FaceRecError, FileNotFoundError, ValueError) as exc:
        logger.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
