"""Training data: identity folders -> the service's aligned 112x112 crops (cached); augmentation.

No PyTorch here (the torch ``Dataset`` s are in ``training.datasets``).

A data folder holds one subfolder per identity; any photos anywhere below it
belong to that identity (``cfp/images/001/frontal/01.jpg`` is identity ``001``).
Faces are found and aligned by the service's own code (``decode_image``, the
SCRFD detector built from its manifest, ``align_face``), so training and serving
see identical crops. The largest face of a photo is its subject.

Crops are cached in one ``.npz`` per (detector, data folder), keyed by each
image's sha256: a rerun, or a moved folder, costs one hash per file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from app.core.types import Detection, ImageArray
from app.errors import FaceRecError
from app.inference.align import ARCFACE_SIZE, align_face
from app.inference.engines.factory import resolve_engine
from app.inference.image import decode_image
from app.inference.loader import build_detector, load_model
from app.inference.scrfd import ScrfdDetector
from app.inference.session import RuntimeOptions
from training.config import AugmentConfig
from training.faces import FaceSet

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# Bumped whenever the crop recipe changes (decode, alignment, face choice): old cache
# files then miss instead of serving crops the service would no longer produce.
CROP_FORMAT_VERSION = 1
# Training inputs are trusted local files; the limits only have to admit them.
_MAX_BYTES = 256 << 20
_MAX_PIXELS = 200_000_000


@dataclass(frozen=True, slots=True)
class ImageRecord:
    path: Path
    relpath: str  # POSIX path below the data folder, e.g. "001/frontal/01.jpg"
    identity: str  # the first path component


def scan_identities(root: Path) -> list[ImageRecord]:
    """Every image below ``root/<identity>/``, sorted by path; files at the top are ignored."""
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    records = []
    for path in sorted(root.rglob("*")):
        relpath = path.relative_to(root).as_posix()
        if "/" in relpath and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            records.append(ImageRecord(path, relpath, relpath.split("/", 1)[0]))
    if not records:
        raise FileNotFoundError(f"no images in identity subfolders of {root}")
    return records


def limit_per_identity(records: Sequence[ImageRecord], limit: int | None) -> list[ImageRecord]:
    """At most ``limit`` images of every identity, taken in turn from each of its folders
    (``frontal/01, profile/01, frontal/02, ...``) so a subset keeps every pose; all when None."""
    if limit is None:
        return list(records)
    by_identity: dict[str, dict[str, list[ImageRecord]]] = {}
    for record in records:
        folder = record.relpath.rsplit("/", 1)[0]
        by_identity.setdefault(record.identity, {}).setdefault(folder, []).append(record)
    kept = []
    for folders in by_identity.values():
        queues = [folders[name] for name in sorted(folders)]
        turns = max(len(queue) for queue in queues)
        in_turn = [queue[i] for i in range(turns) for queue in queues if i < len(queue)]
        kept.extend(sorted(in_turn[:limit], key=lambda r: r.relpath))
    return kept


# --- detection and alignment (the service's code) --------------------------------------


def largest_face(detections: Sequence[Detection]) -> Detection | None:
    return max(detections, key=lambda d: d.area, default=None)


class FaceCropper:
    """Decode -> detect -> largest face -> 112x112 ArcFace crop, exactly as the service."""

    def __init__(self, detector: ScrfdDetector, detector_id: str) -> None:
        self.detector = detector
        self.detector_id = detector_id

    def crop(self, data: bytes) -> ImageArray | None:
        """The aligned crop of the photo's largest face; None when there is no face."""
        pixels = decode_image(data, max_bytes=_MAX_BYTES, max_pixels=_MAX_PIXELS).pixels
        face = largest_face(self.detector.detect(pixels))
        if face is None:
            return None
        return align_face(pixels, face.landmarks, ARCFACE_SIZE)


def build_cropper(detector: str, models_dir: Path, threads: int = 0) -> FaceCropper:
    """The service's detector from its manifest (a catalog name or a manifest path)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The engine the service picks by default on this machine, so that the crops are the
    # service's to the pixel (OpenVINO's landmarks differ from onnxruntime's by < 1 px).
    engine = resolve_engine("auto", ("CPUExecutionProvider",))
    options = RuntimeOptions(engine=engine, intra_op_threads=threads or cores or 1)
    model = load_model(
        detector, "detector", models_dir=models_dir, catalog_dir=None, options=options
    )
    return FaceCropper(build_detector(model), model.manifest.model_id)


# --- crop cache ---------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def cache_file(cache_dir: Path, detector_id: str, data_dir: Path) -> Path:
    """``cache_dir/<detector id>/<folder name>-<hash of its absolute path>.npz``."""
    folder_hash = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]
    label = _slug(f"{data_dir.resolve().parent.name}_{data_dir.name}")
    return cache_dir / _slug(detector_id) / f"{label}-{folder_hash}.npz"


@dataclass(slots=True)
class CropCache:
    """sha256 of the image bytes -> aligned crop (or no face), persisted as one .npz."""

    path: Path
    detector_id: str
    crops: dict[str, ImageArray | None]

    @classmethod
    def open(cls, path: Path, detector_id: str) -> CropCache:
        if not path.is_file():
            return cls(path, detector_id, {})
        with np.load(path, allow_pickle=False) as stored:
            if (
                str(stored["detector_id"]) != detector_id
                or int(stored["version"]) != CROP_FORMAT_VERSION
            ):
                logger.warning("ignoring crop cache %s: other detector or crop version", path)
                return cls(path, detector_id, {})
            hashes, found, crops = stored["sha256"], stored["found"], stored["crops"]
        return cls(
            path,
            detector_id,
            {
                str(digest): (crops[i] if found[i] else None)
                for i, digest in enumerate(hashes.tolist())
            },
        )

    def save(self) -> None:
        hashes = sorted(self.crops)
        empty = np.zeros((ARCFACE_SIZE, ARCFACE_SIZE, 3), dtype=np.uint8)
        stacked = [self.crops[h] for h in hashes]
        found = np.array([crop is not None for crop in stacked], dtype=np.bool_)
        crops = (
            np.stack([empty if crop is None else crop for crop in stacked])
            if hashes
            else (np.zeros((0, ARCFACE_SIZE, ARCFACE_SIZE, 3), dtype=np.uint8))
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        with partial.open("wb") as handle:
            np.savez(
                handle,
                sha256=np.array(hashes, dtype="U64"),
                found=found,
                crops=crops,
                detector_id=np.array(self.detector_id),
                version=np.array(CROP_FORMAT_VERSION),
            )
        os.replace(partial, self.path)


@dataclass(frozen=True, slots=True)
class LoadedFaces:
    faces: FaceSet
    without_face: list[ImageRecord]
    unreadable: list[tuple[ImageRecord, str]]
    detected: int  # photos that went through the detector (cache misses)


def load_faces(
    records: Sequence[ImageRecord],
    cropper: FaceCropper,
    cache_path: Path,
    *,
    progress: bool = True,
) -> LoadedFaces:
    """Aligned crops of ``records`` from the cache, detecting only photos not seen before."""
    cache = CropCache.open(cache_path, cropper.detector_id)
    crops: list[ImageArray] = []
    kept: list[ImageRecord] = []
    without_face: list[ImageRecord] = []
    unreadable: list[tuple[ImageRecord, str]] = []
    detected = 0
    for record in tqdm(records, desc="faces", unit="img", disable=not progress, mininterval=2):
        data = record.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in cache.crops:
            try:
                cache.crops[digest] = cropper.crop(data)
            except FaceRecError as exc:
                unreadable.append((record, exc.message))
                continue
            detected += 1
            if detected % 1000 == 0:
                cache.save()  # a long first pass survives an interruption
        crop = cache.crops[digest]
        if crop is None:
            without_face.append(record)
        else:
            crops.append(crop)
            kept.append(record)
    if detected:
        cache.save()
    stacked = np.stack(crops) if crops else np.zeros((0, ARCFACE_SIZE, ARCFACE_SIZE, 3), np.uint8)
    faces = FaceSet(
        crops=stacked,
        identities=tuple(r.identity for r in kept),
        relpaths=tuple(r.relpath for r in kept),
    )
    return LoadedFaces(faces, without_face, unreadable, detected)


# --- augmentation ------------------------------------------------------------------------------


def _blend(
    image: NDArray[np.float32], other: NDArray[np.float32] | float, factor: float
) -> NDArray[np.float32]:
    return np.asarray(image * factor + other * (1.0 - factor), dtype=np.float32)


def augment_face(
    face: NDArray[np.uint8], rng: np.random.Generator, config: AugmentConfig
) -> NDArray[np.uint8]:
    """One random, alignment-preserving variant of an aligned crop.

    Zoom about the centre (at most +-5%), mirror, brightness / contrast /
    saturation jitter, occasional gaussian blur. No rotation, shear or
    translation: the recognizer expects the eyes and mouth on the template.
    """
    size = face.shape[0]
    image = face
    if config.scale > 0:
        zoom = float(rng.uniform(1.0 - config.scale, 1.0 + config.scale))
        matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), 0.0, zoom)
        image = np.asarray(
            cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0),
            dtype=np.uint8,
        )
    if rng.random() < config.flip:
        image = image[:, ::-1]
    pixels = image.astype(np.float32)
    if config.brightness > 0:
        pixels = pixels * float(rng.uniform(1 - config.brightness, 1 + config.brightness))
    if config.contrast > 0:
        mean = float(pixels.mean())
        pixels = _blend(pixels, mean, float(rng.uniform(1 - config.contrast, 1 + config.contrast)))
    if config.saturation > 0:
        gray = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        factor = float(rng.uniform(1 - config.saturation, 1 + config.saturation))
        pixels = _blend(pixels, gray[..., None], factor)
    if rng.random() < config.blur:
        sigma = float(rng.uniform(*config.blur_sigma))
        pixels = np.asarray(cv2.GaussianBlur(pixels, (0, 0), sigma), dtype=np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
