"""The faces a command works on: identity folders (aligned crops, identities with too few
faces dropped, photos without a face listed), their train/validation split, and the LFW
pairs with the faces of their photos. onnxruntime only: no PyTorch here."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from training.config import ConfigError, FinetuneConfig
from training.data import (
    FaceCropper,
    ImageRecord,
    LoadedFaces,
    cache_file,
    limit_per_identity,
    load_faces,
    scan_identities,
)
from training.evaluation import LfwPair, read_lfw_pairs
from training.faces import FaceSet, split_identities
from training.run_files import NO_FACE_FILE

logger = logging.getLogger("training")


def resolve_models_dir(value: Path | None) -> Path:
    chosen = value or (
        Path(os.environ["FACEREC_MODELS_DIR"]) if os.environ.get("FACEREC_MODELS_DIR") else None
    )
    if chosen is None or not chosen.is_dir():
        raise ConfigError(
            "the detector's .onnx folder is unknown: pass --models-dir or set FACEREC_MODELS_DIR"
        )
    return chosen


def load_cached_faces(
    records: list[ImageRecord],
    folder: Path,
    config: FinetuneConfig,
    cropper: FaceCropper,
    progress: bool,
) -> LoadedFaces:
    """The aligned faces of ``records`` (photos below ``folder``), through its crop cache."""
    cache = cache_file(config.data.cache_dir, cropper.detector_id, folder)
    return load_faces(records, cropper, cache, progress=progress)


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
    loaded = load_cached_faces(records, data_dir, config, cropper, progress)
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
    loaded = load_cached_faces(records, images, config, cropper, progress)
    logger.info(
        "LFW: %d pairs, %d photos, %d without a face",
        len(pairs),
        len(records),
        len(loaded.without_face),
    )
    return pairs, loaded.faces
