"""Every engine against onnxruntime on the same inputs: the same detections, embeddings.

Real models, real photos: boxes and landmarks within 1 px, embeddings cos >= 0.9999
for OpenVINO in f32. In bf16 (the default on CPUs that compute it natively) the
embeddings move, but by less than a one-pixel shift of the photo moves them in f32:
the model's own noise, so the embedding space and model_id stay the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from app.core.types import ImageArray
from app.inference.align import align_face
from app.inference.arcface import ArcFaceEmbedder
from app.inference.engines.openvino_session import cpu_computes_bf16
from app.inference.image import decode_image
from app.inference.loader import build_detector, build_embedder, load_model
from app.inference.scrfd import ScrfdDetector, box_iou
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


def detector_on(
    engine: str, models_dir: Path, threads: int = 2, precision: str = "f32"
) -> ScrfdDetector:
    options = RuntimeOptions(engine=engine, intra_op_threads=threads, precision=precision)  # type: ignore[arg-type]
    model = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=options
    )
    return build_detector(model)


def embedder_on(engine: str, models_dir: Path, precision: str = "f32") -> ArcFaceEmbedder:
    options = RuntimeOptions(engine=engine, intra_op_threads=2, precision=precision)  # type: ignore[arg-type]
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


needs_bf16 = pytest.mark.skipif(not cpu_computes_bf16(), reason="this CPU has no native bf16")


@needs_bf16
def test_bf16_recognizer_stays_close_to_f32_on_the_same_crops(
    models_dir: Path, aligned_faces: NDArray[np.uint8]
) -> None:
    options = RuntimeOptions(engine="openvino", intra_op_threads=2, precision="bf16")
    model = load_model(
        "w600k_mbf_int8", "recognizer", models_dir=models_dir, catalog_dir=None, options=options
    )
    ours = build_embedder(model).embed(aligned_faces)
    reference = embedder_on("onnxruntime", models_dir).embed(aligned_faces)

    assert model.session.precision == "bf16"
    cosines = np.einsum("ij,ij->i", ours, reference)
    assert cosines.min() >= 0.995  # 0.9965 at worst over 313 LFW, CFP and photo faces


def pipeline_embeddings(
    detector: ScrfdDetector, embedder: ArcFaceEmbedder, image: ImageArray
) -> tuple[list[tuple[float, ...]], NDArray[np.float32]]:
    found = detector.detect(image)
    crops = np.stack([align_face(image, d.landmarks) for d in found])
    return [tuple(d.bbox) for d in found], embedder.embed(crops)


def embeddings_of_the_same_faces(
    detector: ScrfdDetector,
    embedder: ArcFaceEmbedder,
    image: ImageArray,
    reference_boxes: list[tuple[float, ...]],
) -> NDArray[np.float32]:
    """Embeddings of ``image``'s faces, in the order of ``reference_boxes`` (IoU >= 0.5)."""
    boxes, embeddings = pipeline_embeddings(detector, embedder, image)
    assert len(boxes) == len(reference_boxes)
    order = []
    for box in reference_boxes:
        overlaps = [box_iou(box, other) for other in boxes]
        assert max(overlaps) >= 0.5, "a face found in f32 is missing"
        order.append(int(np.argmax(overlaps)))
    return embeddings[order]


@needs_bf16
def test_bf16_moves_embeddings_less_than_a_one_pixel_shift_of_the_photo(
    models_dir: Path, images: list[ImageArray], reference_detector: ScrfdDetector
) -> None:
    """Both models in bf16 (``FACEREC_OPENVINO_PRECISION=bf16``, the larger change)."""
    reference_embedder = embedder_on("onnxruntime", models_dir)
    bf16_detector = detector_on("openvino", models_dir, precision="bf16")
    bf16_embedder = embedder_on("openvino", models_dir, precision="bf16")
    by_bf16: list[float] = []
    by_shift: list[float] = []
    nearest_is_itself: list[bool] = []
    for image in images:
        boxes, reference = pipeline_embeddings(reference_detector, reference_embedder, image)
        shifted = np.ascontiguousarray(np.pad(image, ((1, 0), (1, 0), (0, 0)), "edge")[:-1, :-1])
        in_bf16 = embeddings_of_the_same_faces(bf16_detector, bf16_embedder, image, boxes)
        after_shift = embeddings_of_the_same_faces(
            reference_detector, reference_embedder, shifted, boxes
        )
        by_bf16.extend(np.einsum("ij,ij->i", in_bf16, reference))
        by_shift.extend(np.einsum("ij,ij->i", after_shift, reference))
        nearest_is_itself.extend(np.argmax(in_bf16 @ reference.T, axis=1) == np.arange(len(boxes)))

    assert len(by_bf16) >= 30
    assert all(nearest_is_itself)
    # Measured over 313 faces: median 0.9990 in bf16 against 0.9957 for the shift.
    assert np.median(by_bf16) > np.median(by_shift)
    assert np.mean(by_bf16) > np.mean(by_shift)
