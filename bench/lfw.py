"""LFW View-2 images through the service's ``POST /embed``: the largest face of each.

The numerics (pairs.txt, 10-fold accuracy, calibration) are ``training.evaluation``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from app.core.types import FloatArray
from bench.service import Service, checked_json, largest_face, upload


@dataclass(frozen=True, slots=True)
class LfwEmbeddings:
    """One service's embeddings of the images (rows of images without a face are zero)."""

    images: list[str]  # paths relative to lfw/images
    embeddings: FloatArray  # (n, dim)
    found: NDArray[np.bool_]  # (n,) a face was detected
    seconds: float  # time spent in /embed (HTTP included), measured interleaved

    def as_mapping(self) -> dict[str, NDArray[np.float32]]:
        """Image -> embedding, for the images with a face."""
        return {name: self.embeddings[i] for i, name in enumerate(self.images) if self.found[i]}

    def subset(self, images: Sequence[str]) -> LfwEmbeddings:
        """The rows of ``images`` (time not apportioned: 0)."""
        index = {name: i for i, name in enumerate(self.images)}
        rows = np.array([index[name] for name in images], dtype=np.int64)
        return LfwEmbeddings(list(images), self.embeddings[rows], self.found[rows], 0.0)


def embed_largest_faces(
    services: Sequence[Service], images_dir: Path, images: Sequence[str]
) -> list[LfwEmbeddings]:
    """POST /embed every image to every service, keeping the embedding of its largest face.

    The services take turns per image, in a rotating order, so load from other processes
    falls on all of them alike; each one's time is the sum of its own requests.
    """
    rows: list[list[list[float] | None]] = [[] for _ in services]
    seconds = [0.0] * len(services)
    for number, name in enumerate(tqdm(images, desc="LFW /embed", unit="img", mininterval=5.0)):
        content = upload(images_dir / name)
        for turn in range(len(services)):
            which = (number + turn) % len(services)
            start = time.perf_counter()
            response = services[which].client.post("/embed", files={"image": content})
            seconds[which] += time.perf_counter() - start
            face = largest_face(checked_json(response)["faces"])
            rows[which].append(face["embedding"] if face else None)
    return [_matrix(list(images), found, spent) for found, spent in zip(rows, seconds, strict=True)]


def _matrix(images: list[str], rows: list[list[float] | None], seconds: float) -> LfwEmbeddings:
    dim = next((len(row) for row in rows if row is not None), 1)
    embeddings = np.zeros((len(rows), dim), dtype=np.float32)
    for index, row in enumerate(rows):
        if row is not None:
            embeddings[index] = row
    found = np.array([row is not None for row in rows], dtype=np.bool_)
    return LfwEmbeddings(images=images, embeddings=embeddings, found=found, seconds=seconds)


def save_embeddings(path: Path, label: str, lfw: LfwEmbeddings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        label=label,
        images=np.array(lfw.images),
        embeddings=lfw.embeddings,
        found=lfw.found,
        seconds=lfw.seconds,
    )
