"""``python -m training finetune``: data (folders or a gallery) -> crops -> split -> backbone +
margin head -> epochs -> base vs fine-tuned comparison -> ONNX + manifest + report."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from app.core.types import FloatArray
from app.inference.manifest import file_sha256
from training.base_model import BaseModel, resolve_base
from training.config import ConfigError, FinetuneConfig, config_from_args, dump_config
from training.data import FaceCropper, build_cropper
from training.evaluate import evaluate_embeddings
from training.evaluation import ProtocolResult
from training.export_cmd import export_recognizer
from training.face_sources import load_identity_faces, load_lfw, resolve_models_dir, split_faces
from training.faces import FaceSet
from training.report import format_table, plot_protocols, write_json
from training.run_files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    REPORT_FILE,
    SPLIT_FILE,
)
from training.runtime import Distributed
from training.trainer import Trainer

logger = logging.getLogger("training")


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
    fit_document = fit.document()
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
    report_run(
        out_dir,
        summaries,
        timings=timings,
        fit_document=fit_document,
        min_cosine=min_cosine,
        manifest=manifest,
        plots=plots,
    )
    distributed.close()
    return 0


def report_run(
    out_dir: Path,
    summaries: dict[str, dict[str, Any]],
    *,
    timings: dict[str, float],
    fit_document: dict[str, Any],
    min_cosine: float,
    manifest: Path,
    plots: list[Path],
) -> None:
    """metrics.json and report.txt in ``out_dir``; the table, manifest and timings printed."""
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
