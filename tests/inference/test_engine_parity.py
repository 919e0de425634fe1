"""Every engine against onnxruntime on the same inputs: the same detections, embeddings.

Real models, real photos: boxes and landmarks within 1 px, embeddings cos >= 0.9999
(OpenVINO runs FP32 here, so the embedding space is the same and so is model_id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from app.core.types import ImageArray
from app.inference.align import align_face
from app.inference.arcface import ArcFaceEmbedder
from app.inference.image import decode_image
from app.inference.loader import build_detector, build_embedder, load_model
from app.inference.scrfd import ScrfdDetector
from app.inference.session import RuntimeOptions
from bench.common import list_images

ENGINES = ("openvino",)
MAX_PIXEL_DIFFERENCE = 1.0
MIN_COSINE = 0.9999


def rgb(path: Path) -> ImageArray:
    return decode_image(path.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26).pixels


@pytest.fixture(scope="module")
def images(data_root: Path) -> list[ImageArray]:
    """The 7 photos (1 to 6 faces, 112 to 2280 px) and 8 LFW and 4 CFP close-ups."""
    lfw = list_images(data_root / "lfw" / "images")[:8]
    cfp = [data_root / "cfp" / "images" / f"00{n}" / "frontal" / "01.jpg" for n in (1, 2, 3, 4)]
    return [rgb(path) for path in [*list_images(data_root / "photos"), *lfw, *cfp]]


def detector_on(engine: str, models_dir: Path, threads: int = 2) -> ScrfdDetector:
    options = RuntimeOptions(engine=engine, intra_op_threads=threads)  # type: ignore[arg-type]
    model = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=options
    )
    return build_detector(model)


def embedder_on(engine: str, models_dir: Path) -> ArcFaceEmbedder:
    options = RuntimeOptions(engine=engine, intra_op_threads=2)  # type: ignore[arg-type]
    model = load_model(
        "w600k_mbf_int8", "recognizer", models_dir=models_dir, catalog_dir=None, options=options
    )
    return build_embedder(model)


@pytest.fixture(scope="module")
def reference_detector(models_dir: Path) -> ScrfdDetector:
    return detector_on("onnxruntime", models_dir)


@pytest.mark.parametrize("engine", ENGINES)
def test_detections_match_onnxruntime_within_a_pixel(
    engine: str,
    models_dir: Path,
    images: list[ImageArray],
    reference_detector: ScrfdDetector,
) -> None:
    detector = detector_on(engine, models_dir)
    compared = 0
    for image in images:
        ours, reference = detector.detect(image), reference_detector.detect(image)
        assert len(ours) == len(reference)
        for a, b in zip(ours, reference, strict=True):
            assert np.abs(np.subtract(a.bbox, b.bbox)).max() <= MAX_PIXEL_DIFFERENCE
            assert np.abs(a.landmarks - b.landmarks).max() <= MAX_PIXEL_DIFFERENCE
            assert a.score == pytest.approx(b.score, abs=1e-3)
            compared += 1
    assert compared >= 30  # 22 faces in the photos alone


@pytest.fixture(scope="module")
def aligned_faces(images: list[ImageArray], reference_detector: ScrfdDetector) -> NDArray[np.uint8]:
    crops = [
        align_face(image, detection.landmarks)
        for image in images
        for detection in reference_detector.detect(image)
    ]
    return np.stack(crops)


@pytest.mark.parametrize("engine", ENGINES)
def test_embeddings_match_onnxruntime(
    engine: str, models_dir: Path, aligned_faces: NDArray[np.uint8]
) -> None:
    ours = embedder_on(engine, models_dir).embed(aligned_faces)
    reference = embedder_on("onnxruntime", models_dir).embed(aligned_faces)

    cosines = np.einsum("ij,ij->i", ours, reference)
    assert cosines.shape == (aligned_faces.shape[0],)
    assert cosines.min() >= MIN_COSINE


@pytest.mark.parametrize("engine", ENGINES)
def test_the_engine_is_safe_to_call_from_several_threads(
    engine: str, models_dir: Path, aligned_faces: NDArray[np.uint8]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    embedder = embedder_on(engine, models_dir)
    singles = [embedder.embed(aligned_faces[i : i + 1]) for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: embedder.embed(aligned_faces[i : i + 1]), range(8)))

    for single, threaded in zip(singles, results, strict=True):
        np.testing.assert_allclose(threaded, single, atol=1e-6)
