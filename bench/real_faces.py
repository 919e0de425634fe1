"""Real face embeddings of the shared data sets, computed once with the service's pipeline.

Every image of LFW (the 7,701 View-2 images), CFP (frontal and profile) and CelebA
goes through the service's own decode -> SCRFD -> alignment -> ArcFace path (the
configured detector and recognizer, in-process); the embedding of the image's
largest face is kept. The result is cached under ``bench/results/scale/`` keyed by
the recognizer's model id and the image list, so later runs load it in a second.

Identities are prefixed by their data set (``lfw/George_W_Bush``, ``cfp/001``,
``celeba/7203``): names never collide across data sets.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.config import Settings
from app.core.pipeline import FacePipeline
from app.core.types import FloatArray
from app.main import build_runtime
from bench.common import LabelledImage, list_images, load_rgb, read_celeba

# Bumped when what is cached changes meaning (the cache is then recomputed).
CACHE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class RealFaces:
    """One embedding per image that had a face: ``identities[i]`` owns ``embeddings[i]``."""

    model_id: str
    identities: list[str]
    paths: list[str]  # relative to the data root
    embeddings: FloatArray  # (N, dim) float32, unit norm

    def __len__(self) -> int:
        return len(self.identities)

    def subset(self, rows: Sequence[int]) -> RealFaces:
        return RealFaces(
            model_id=self.model_id,
            identities=[self.identities[row] for row in rows],
            paths=[self.paths[row] for row in rows],
            embeddings=self.embeddings[np.asarray(rows, dtype=np.int64)],
        )


def shared_images(data_root: Path) -> list[LabelledImage]:
    """LFW, CFP and CelebA images with data-set-prefixed identities, in a stable order."""
    images: list[LabelledImage] = []
    lfw = data_root / "lfw" / "images"
    images += [LabelledImage(path, f"lfw/{path.parent.name}") for path in list_images(lfw)]
    cfp = data_root / "cfp" / "images"
    # cfp/images/NNN/{frontal,profile}/NN.jpg: the identity is two folders up.
    images += [LabelledImage(path, f"cfp/{path.parent.parent.name}") for path in list_images(cfp)]
    celeba = data_root / "celeba"
    images += [LabelledImage(row.path, f"celeba/{row.identity}") for row in read_celeba(celeba)]
    return images


def _cache_key(model_id: str, images: Sequence[LabelledImage], data_root: Path) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{model_id}\n".encode())
    for image in images:
        digest.update(f"{image.path.relative_to(data_root)}\t{image.identity}\n".encode())
    return digest.hexdigest()[:16]


def load_real_faces(
    settings: Settings, data_root: Path, cache_dir: Path, *, limit: int | None = None
) -> RealFaces:
    """The cached embeddings for ``settings``' models, computing (and caching) them if needed."""
    images = shared_images(data_root)[:limit]
    with tempfile.TemporaryDirectory(prefix="facerec-real-faces-") as scratch:
        runtime = build_runtime(settings.model_copy(update={"data_dir": Path(scratch)}))
        try:
            model_id = runtime.recognizer.manifest.model_id
            cache = cache_dir / f"real-faces-{_cache_key(model_id, images, data_root)}.npz"
            if cache.is_file():
                return _read(cache)
            print(f"embedding {len(images)} real face images (cached in {cache})")
            faces = _embed(runtime.service.pipeline, images, data_root, model_id)
        finally:
            runtime.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npz")
    np.savez(
        partial,
        model_id=np.array(model_id),
        identities=np.array(faces.identities),
        paths=np.array(faces.paths),
        embeddings=faces.embeddings,
    )
    partial.replace(cache)
    return faces


def _embed(
    pipeline: FacePipeline, images: Sequence[LabelledImage], data_root: Path, model_id: str
) -> RealFaces:
    identities: list[str] = []
    paths: list[str] = []
    embeddings: list[FloatArray] = []
    for image in tqdm(images, unit="image", mininterval=5.0):
        faces = pipeline.analyze(load_rgb(image.path))
        if not faces:
            continue
        largest = max(faces, key=lambda face: face.detection.area)
        identities.append(image.identity)
        paths.append(str(image.path.relative_to(data_root)))
        embeddings.append(largest.embedding)
    return RealFaces(
        model_id=model_id,
        identities=identities,
        paths=paths,
        embeddings=np.stack(embeddings).astype(np.float32),
    )


def _read(path: Path) -> RealFaces:
    with np.load(path) as archive:
        return RealFaces(
            model_id=str(archive["model_id"]),
            identities=[str(value) for value in archive["identities"]],
            paths=[str(value) for value in archive["paths"]],
            embeddings=np.ascontiguousarray(archive["embeddings"], dtype=np.float32),
        )
