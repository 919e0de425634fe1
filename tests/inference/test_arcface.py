"""ArcFace embedder: normalisation, batching, preprocessing; the real model's batch independence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from app.errors import ModelError
from app.inference.align import align_face
from app.inference.arcface import ArcFaceEmbedder, l2_normalize
from app.inference.catalog import resolve_manifest
from app.inference.loader import LoadedModel, build_detector, build_embedder, load_model
from app.inference.manifest import Augment, ModelManifest
from app.inference.session import RuntimeOptions

DIM = 512


# --- l2_normalize -----------------------------------------------------------------


def test_l2_normalize_gives_unit_rows_in_the_same_direction() -> None:
    vectors = np.array([[3.0, 4.0], [-2.0, 0.0], [1e-3, 1e-3]], dtype=np.float32)

    unit = l2_normalize(vectors)

    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(unit[1], [-1.0, 0.0])
    assert unit.dtype == np.float32


def test_l2_normalize_leaves_a_zero_vector_zero_instead_of_nan() -> None:
    unit = l2_normalize(np.zeros((1, 4), dtype=np.float32))

    np.testing.assert_array_equal(unit, 0.0)


def test_l2_normalize_returns_float32_for_float64_input() -> None:
    assert l2_normalize(np.ones((2, 3), dtype=np.float64)).dtype == np.float32


# --- ArcFaceEmbedder with a fake session ------------------------------------------


class EchoSession:
    """A fake recognizer: each embedding is the first DIM input values of its face."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.batches: list[NDArray[np.float32]] = []

    def run(self, feed: dict[str, NDArray[np.float32]]) -> list[Any]:
        (tensor,) = feed.values()
        self.batches.append(tensor)
        flat = tensor.reshape(tensor.shape[0], -1)
        return [flat[:, : self.dim] + 2.0]  # never zero: normalisation stays meaningful


@pytest.fixture(scope="module")
def recognizer_manifest() -> ModelManifest:
    """The default recognizer's manifest without test-time augmentation."""
    return resolve_manifest("w600k_mbf_int8")[0].model_copy(update={"augment": Augment(flip=False)})


def with_input(manifest: ModelManifest, **changes: Any) -> ModelManifest:
    return manifest.model_copy(update={"input": manifest.input.model_copy(update=changes)})


def tensor_of(faces: NDArray[np.uint8], manifest: ModelManifest) -> NDArray[np.float32]:
    """The network input for RGB crops, computed independently of the embedder."""
    mean = np.float32(manifest.preprocess.mean[0])
    std = np.float32(manifest.preprocess.std[0])
    return ((faces.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)


def crops(count: int) -> NDArray[np.uint8]:
    rng = np.random.default_rng(count)
    return rng.integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)


def test_embed_returns_unit_norm_float32_rows_one_per_face(
    recognizer_manifest: ModelManifest,
) -> None:
    embedder = ArcFaceEmbedder(EchoSession(), recognizer_manifest)  # type: ignore[arg-type]

    embeddings = embedder.embed(crops(3))

    assert embeddings.shape == (3, DIM)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_embed_of_no_faces_is_empty_without_running_the_model(
    recognizer_manifest: ModelManifest,
) -> None:
    session = EchoSession()
    embedder = ArcFaceEmbedder(session, recognizer_manifest)  # type: ignore[arg-type]

    embeddings = embedder.embed(np.zeros((0, 112, 112, 3), dtype=np.uint8))

    assert embeddings.shape == (0, DIM)
    assert session.batches == []


def test_embed_runs_at_most_max_batch_faces_at_a_time_and_keeps_their_order(
    recognizer_manifest: ModelManifest,
) -> None:
    session = EchoSession()
    manifest = with_input(recognizer_manifest, max_batch=2)
    faces = crops(5)

    embeddings = ArcFaceEmbedder(session, manifest).embed(faces)  # type: ignore[arg-type]
    one_by_one = [ArcFaceEmbedder(EchoSession(), manifest).embed(f[None]) for f in faces]  # type: ignore[arg-type]

    assert [batch.shape[0] for batch in session.batches] == [2, 2, 1]
    np.testing.assert_array_equal(embeddings, np.concatenate(one_by_one))


def test_embed_feeds_nchw_pixels_normalised_in_the_manifest_colour_order(
    recognizer_manifest: ModelManifest,
) -> None:
    face = np.zeros((1, 112, 112, 3), dtype=np.uint8)
    face[..., 0] = 255  # pure red
    bgr_manifest = recognizer_manifest.model_copy(
        update={
            "preprocess": recognizer_manifest.preprocess.model_copy(update={"color_order": "BGR"})
        }
    )
    rgb_session, bgr_session = EchoSession(), EchoSession()

    ArcFaceEmbedder(rgb_session, recognizer_manifest).embed(face)  # type: ignore[arg-type]
    ArcFaceEmbedder(bgr_session, bgr_manifest).embed(face)  # type: ignore[arg-type]

    (rgb_tensor,), (bgr_tensor,) = rgb_session.batches, bgr_session.batches
    assert rgb_tensor.shape == (1, 3, 112, 112)
    assert rgb_tensor.dtype == np.float32
    np.testing.assert_allclose(rgb_tensor[0, :, 0, 0], [1.0, -1.0, -1.0])  # (x - 127.5) / 127.5
    np.testing.assert_allclose(bgr_tensor[0, :, 0, 0], [-1.0, -1.0, 1.0])


def test_embed_refuses_a_model_whose_dimension_differs_from_the_manifest(
    recognizer_manifest: ModelManifest,
) -> None:
    embedder = ArcFaceEmbedder(EchoSession(dim=128), recognizer_manifest)  # type: ignore[arg-type]

    with pytest.raises(ModelError, match="dim 512"):
        embedder.embed(crops(1))


def test_embedder_refuses_a_detector_manifest() -> None:
    detector, _ = resolve_manifest("scrfd_500m")

    with pytest.raises(ModelError, match="not a recognizer"):
        ArcFaceEmbedder(EchoSession(), detector)  # type: ignore[arg-type]


# --- the real model ---------------------------------------------------------------


def load(name: str, kind: str, models_dir: Path) -> LoadedModel:
    return load_model(name, kind, models_dir=models_dir, catalog_dir=None, options=RuntimeOptions())


@pytest.fixture(scope="module")
def embedder(models_dir: Path) -> ArcFaceEmbedder:
    """The default recognizer: w600k_mbf_int8 dequantised to FP32 on import."""
    return build_embedder(load("w600k_mbf_int8", "recognizer", models_dir))


@pytest.fixture(scope="module")
def six_faces(models_dir: Path, photos: Path) -> NDArray[np.uint8]:
    detector = build_detector(load("scrfd_500m", "detector", models_dir))
    image = cv2.cvtColor(cv2.imread(str(photos / "insightface_t1.jpg")), cv2.COLOR_BGR2RGB)
    detections = detector.detect(image)
    assert len(detections) == 6
    return np.stack([align_face(image, d.landmarks) for d in detections])


def test_the_default_embedder_dequantizes_and_batches(embedder: ArcFaceEmbedder) -> None:
    assert embedder.manifest.import_steps.dequantize
    assert embedder.manifest.input.max_batch > 1  # type: ignore[union-attr]


def test_an_embedding_does_not_depend_on_the_other_faces_in_its_batch(
    embedder: ArcFaceEmbedder, six_faces: NDArray[np.uint8]
) -> None:
    batched = embedder.embed(six_faces)
    alone = np.concatenate([embedder.embed(face[None]) for face in six_faces])
    reversed_batch = embedder.embed(six_faces[::-1])[::-1]

    cosines = np.sum(batched * alone, axis=1)
    print(f"\nbatch of 6 vs alone: min cosine {cosines.min():.7f}")
    assert cosines.min() > 0.9999
    assert np.sum(batched * reversed_batch, axis=1).min() > 0.9999


def test_flip_embedding_is_the_normalised_sum_of_the_crop_and_its_mirror(
    recognizer_manifest: ModelManifest,
) -> None:
    faces = crops(3)
    plain = ArcFaceEmbedder(EchoSession(), recognizer_manifest)  # type: ignore[arg-type]
    flipped = ArcFaceEmbedder(
        EchoSession(),  # type: ignore[arg-type]
        recognizer_manifest.model_copy(update={"augment": Augment(flip=True)}),
    )
    session = EchoSession()
    mirrored = faces[:, :, ::-1]
    raw = [
        session.run({"x": tensor_of(batch, recognizer_manifest)})[0] for batch in (faces, mirrored)
    ]
    expected = l2_normalize(raw[0] + raw[1])

    np.testing.assert_allclose(flipped.embed(faces), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain.embed(faces), expected)
