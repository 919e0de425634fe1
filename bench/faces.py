"""The labelled faces of ../shared/data (LFW, CFP, CelebA) as one set of embeddings, each
image's largest face through the service's ``POST /embed``, cached per recognizer.

Identities are ``<data set>:<name or id>``. Names do not link data sets: CFP's
``list_name.txt`` spells many LFW people differently ("Jean Chretian", "George Bush",
"Gerard Schroeder", "Nancy Peloci": 921 LFW-CFP pairs of "different" names at or above
0.475, nearly all the same person), and CelebA has numbers, not names. So faces pair only
within their own data set (``bench.impostor_tail.Pairing``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from app.core.types import FloatArray
from bench.common import list_images, read_celeba
from bench.lfw import LfwEmbeddings, embed_largest_faces, save_embeddings
from bench.service import Service

DATASETS = ("lfw", "cfp", "celeba")
# The data set the open-set checks enroll and probe with (the most identities).
CHECK_DATASET = "lfw"


@dataclass(frozen=True, slots=True)
class FaceImage:
    dataset: str
    path: str  # relative to the data set's images/ folder
    identity: str  # ``<data set>:<name or id>``


@dataclass(frozen=True, slots=True)
class FaceSet:
    """Embedded images (rows of images without a face dropped)."""

    images: list[FaceImage]
    embeddings: FloatArray  # (n, dim), unit norm
    without_face: int

    @property
    def identities(self) -> list[str]:
        return [image.identity for image in self.images]

    @property
    def datasets(self) -> NDArray[np.str_]:
        return np.array([image.dataset for image in self.images])


def name_key(dataset: str, name: str) -> str:
    """``lfw:aaron_rodgers`` for ``Aaron_Rodgers``: lower case, words joined by ``_``."""
    return f"{dataset}:" + "_".join(re.split(r"[\s_]+", name.strip().lower()))


def list_dataset(data_root: Path, dataset: str) -> list[FaceImage]:
    """Every image of one data set with its identity key, sorted by path."""
    if dataset == "lfw":
        images_dir = data_root / "lfw" / "images"
        return [
            FaceImage("lfw", str(path.relative_to(images_dir)), name_key("lfw", path.parent.name))
            for path in list_images(images_dir)
        ]
    if dataset == "cfp":
        names = (data_root / "cfp" / "list_name.txt").read_text(encoding="utf-8").splitlines()
        images_dir = data_root / "cfp" / "images"
        found = []
        for path in list_images(images_dir):
            number = int(path.relative_to(images_dir).parts[0])
            found.append(
                FaceImage(
                    "cfp", str(path.relative_to(images_dir)), name_key("cfp", names[number - 1])
                )
            )
        return found
    if dataset == "celeba":
        images_dir = data_root / "celeba" / "images"
        return [
            FaceImage("celeba", str(row.path.relative_to(images_dir)), f"celeba:{row.identity}")
            for row in read_celeba(data_root / "celeba")
        ]
    raise ValueError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")


def images_dir(data_root: Path, dataset: str) -> Path:
    return data_root / dataset / "images"


def load_cached(path: Path, recognizer_id: str, expected: Sequence[str]) -> LfwEmbeddings | None:
    """A saved ``.npz`` (``bench.lfw.save_embeddings``) of exactly these images, labelled
    with this recognizer's model id, or None."""
    if not path.is_file():
        return None
    with np.load(path) as saved:
        images = [str(name) for name in saved["images"]]
        if str(saved["label"]) != recognizer_id or sorted(images) != sorted(expected):
            return None
        index = {name: row for row, name in enumerate(images)}
        rows = np.array([index[name] for name in expected], dtype=np.int64)
        return LfwEmbeddings(
            images=list(expected),
            embeddings=saved["embeddings"][rows].astype(np.float32),
            found=saved["found"][rows].astype(np.bool_),
            seconds=float(saved["seconds"]),
        )


def embed_dataset(
    service: Service, data_root: Path, dataset: str, cache: Path | None
) -> tuple[list[FaceImage], LfwEmbeddings]:
    """One data set's embeddings: from ``cache/<dataset>.npz`` when it holds these images
    for this recognizer, else through ``POST /embed`` (then saved there)."""
    listed = list_dataset(data_root, dataset)
    names = [image.path for image in listed]
    cached_file = cache / f"{dataset}.npz" if cache else None
    embedded = load_cached(cached_file, service.recognizer_id, names) if cached_file else None
    if embedded is None:
        (embedded,) = embed_largest_faces([service], images_dir(data_root, dataset), names)
        if cached_file:
            save_embeddings(cached_file, service.recognizer_id, embedded)
    return listed, embedded


def embed_faces(
    service: Service, data_root: Path, datasets: Sequence[str], cache: Path | None
) -> FaceSet:
    """All chosen data sets as one face set, in ``datasets`` order."""
    images: list[FaceImage] = []
    rows: list[FloatArray] = []
    without_face = 0
    for dataset in datasets:
        listed, embedded = embed_dataset(service, data_root, dataset, cache)
        print(
            f"{dataset}: {len(listed):,} images, {int(embedded.found.sum()):,} with a face "
            f"({embedded.seconds:.0f} s in /embed)"
        )
        images += [image for image, found in zip(listed, embedded.found, strict=True) if found]
        rows.append(embedded.embeddings[embedded.found])
        without_face += int((~embedded.found).sum())
    return FaceSet(images=images, embeddings=np.concatenate(rows), without_face=without_face)
