"""FacePipeline: orchestration with fakes, then the real models end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from app.core.pipeline import FacePipeline
from app.core.types import Detection
from app.inference.align import align_face
from app.inference.loader import build_detector, build_embedder, load_model
from app.inference.session import RuntimeOptions


def detection(x: float) -> Detection:
    landmarks = np.array([[x, 10], [x + 10, 10], [x + 5, 15], [x + 2, 20], [x + 8, 20]], np.float32)
    return Detection(bbox=(x, 0.0, x + 12, 24.0), score=0.9, landmarks=landmarks)


class FixedDetector:
    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        return self.detections


class RecordingEmbedder:
    """Embeds a crop as a one-hot of its batch position; remembers every batch."""

    dim = 4

    def __init__(self) -> None:
        self.batches: list[NDArray[np.uint8]] = []

    def embed(self, aligned_faces: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.batches.append(aligned_faces)
        return np.eye(len(aligned_faces), self.dim, dtype=np.float32)


def x_of_landmarks_aligner(image: NDArray[np.uint8], landmarks: NDArray[np.float32]) -> NDArray:
    """A fake aligner whose crop records which face it was made from."""
    return np.full((8, 8, 3), int(landmarks[0, 0]), dtype=np.uint8)


def test_embed_aligns_every_detection_and_embeds_them_in_one_batch_in_order() -> None:
    detections = [detection(10), detection(50), detection(90)]
    embedder = RecordingEmbedder()
    pipeline = FacePipeline(FixedDetector(detections), embedder, x_of_landmarks_aligner)

    faces = pipeline.analyze(np.zeros((100, 120, 3), np.uint8))

    (batch,) = embedder.batches
    assert batch.shape == (3, 8, 8, 3)
    assert [face.detection for face in faces] == detections
    assert [int(face.aligned[0, 0, 0]) for face in faces] == [10, 50, 90]
    assert [int(np.argmax(face.embedding)) for face in faces] == [0, 1, 2]


def test_detect_caps_at_max_faces_keeping_the_largest_unless_asked_for_every_face() -> None:
    small, large, medium = detection(0), detection(40), detection(80)
    large = Detection(bbox=(40.0, 0.0, 80.0, 60.0), score=0.9, landmarks=large.landmarks)
    medium = Detection(bbox=(80.0, 0.0, 100.0, 40.0), score=0.9, landmarks=medium.landmarks)
    pipeline = FacePipeline(
        FixedDetector([small, large, medium]),
        RecordingEmbedder(),
        x_of_landmarks_aligner,
        max_faces=2,
    )
    image = np.zeros((100, 120, 3), np.uint8)

    assert pipeline.detect(image) == [large, medium]  # the 2 largest, in detection order
    assert pipeline.detect(image, capped=False) == [small, large, medium]
    assert len(pipeline.analyze(image)) == 2


def test_no_detections_never_run_the_embedder() -> None:
    embedder = RecordingEmbedder()
    pipeline = FacePipeline(FixedDetector([]), embedder, x_of_landmarks_aligner)

    assert pipeline.analyze(np.zeros((100, 120, 3), np.uint8)) == []
    assert embedder.batches == []


# --- real models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(models_dir: Path) -> FacePipeline:
    """The service's default pipeline: SCRFD-500M, dequantised MobileFaceNet, ArcFace alignment."""
    options = RuntimeOptions()
    detector = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=options
    )
    recognizer = load_model(
        "w600k_mbf_int8", "recognizer", models_dir=models_dir, catalog_dir=None, options=options
    )
    return FacePipeline(build_detector(detector), build_embedder(recognizer), align_face)


def read_rgb(path: Path) -> NDArray[np.uint8]:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_analyze_finds_six_faces_with_unit_embeddings_and_aligned_crops(
    pipeline: FacePipeline, photos: Path
) -> None:
    faces = pipeline.analyze(read_rgb(photos / "insightface_t1.jpg"))

    assert len(faces) == 6
    for face in faces:
        assert face.embedding.shape == (512,)
        assert face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.aligned.shape == (112, 112, 3)
        assert face.aligned.dtype == np.uint8
    embeddings = np.stack([face.embedding for face in faces])
    similarities = embeddings @ embeddings.T
    assert similarities[~np.eye(6, dtype=bool)].max() < 0.5  # six different people


def test_analyze_of_a_blank_image_finds_no_face(pipeline: FacePipeline) -> None:
    assert pipeline.analyze(np.full((480, 640, 3), 128, dtype=np.uint8)) == []


def test_analyze_finds_the_face_of_a_112_pixel_close_up(
    pipeline: FacePipeline, photos: Path
) -> None:
    image = read_rgb(photos / "insightface_Tom_Hanks_54745.png")
    assert image.shape == (112, 112, 3)

    (face,) = pipeline.analyze(image)

    x1, y1, x2, y2 = face.detection.bbox
    assert 28 < (x1 + x2) / 2 < 84
    assert 28 < (y1 + y2) / 2 < 84


def test_a_close_up_filling_the_frame_is_found_by_the_padded_second_pass(
    pipeline: FacePipeline, photos: Path
) -> None:
    image = cv2.resize(read_rgb(photos / "insightface_Tom_Hanks_54745.png"), (640, 640))
    assert pipeline.detector.detect(image, (640, 640)) == []  # type: ignore[call-arg]

    (face,) = pipeline.analyze(image)

    x1, y1, x2, y2 = face.detection.bbox
    assert 160 < (x1 + x2) / 2 < 480
    assert 160 < (y1 + y2) / 2 < 480
    assert x2 - x1 > 320  # the face fills the frame, in the photo's own coordinates
