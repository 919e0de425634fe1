"""Fixtures for the gallery tests: tmp galleries and seeded random unit embeddings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from app.core.types import FloatArray, NewFace
from app.gallery.embedded import EmbeddedGallery as Gallery

# Small vectors keep the suite fast; nothing in the gallery depends on the size.
DIM = 32
MODEL_ID = "test-recognizer-v1"

UnitVectors = Callable[[int], FloatArray]
NearVector = Callable[[FloatArray], FloatArray]
MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., Gallery]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def unit_vectors(rng: np.random.Generator) -> UnitVectors:
    """``unit_vectors(n)``: n random L2-normalised float32 vectors, (n, DIM)."""

    def draw(count: int) -> FloatArray:
        vectors = rng.standard_normal((count, DIM)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return draw


@pytest.fixture
def near(rng: np.random.Generator) -> NearVector:
    """``near(v)``: a unit vector close to v (another photo of the same person)."""

    def perturb(vector: FloatArray) -> FloatArray:
        moved = vector + 0.05 * rng.standard_normal(vector.shape).astype(np.float32)
        return (moved / np.linalg.norm(moved)).astype(np.float32)

    return perturb


@pytest.fixture
def make_face(unit_vectors: UnitVectors) -> MakeFace:
    """``make_face(embedding=None, *, image=None, aligned_png=None)`` -> NewFace.

    Every call without ``image`` stands for a different photo (fresh sha256).
    """
    counter = iter(range(1_000_000))

    def build(
        embedding: FloatArray | None = None,
        *,
        image: str | None = None,
        aligned_png: bytes | None = None,
    ) -> NewFace:
        label = image if image is not None else f"photo-{next(counter)}"
        return NewFace(
            image_sha256=hashlib.sha256(label.encode()).hexdigest(),
            bbox=(10.0, 20.0, 110.0, 140.0),
            det_score=0.9,
            embedding=unit_vectors(1)[0] if embedding is None else embedding,
            aligned_png=aligned_png,
        )

    return build


@pytest.fixture
def gallery_dir(tmp_path: Path) -> Path:
    return tmp_path / "gallery"


@pytest.fixture
def open_gallery(gallery_dir: Path) -> Iterator[OpenGallery]:
    """``open_gallery(model_id=MODEL_ID, dim=DIM)``; every gallery opened is closed at teardown."""
    opened: list[Gallery] = []

    def open_(*, model_id: str = MODEL_ID, dim: int = DIM) -> Gallery:
        gallery = Gallery(gallery_dir, model_id=model_id, dim=dim)
        opened.append(gallery)
        return gallery

    yield open_
    for gallery in opened:
        gallery.close()


@pytest.fixture
def gallery(open_gallery: OpenGallery) -> Gallery:
    return open_gallery()
