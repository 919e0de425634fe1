"""The appearance signal and crop quality on real faces: same face vs somebody else."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.types import Detection
from app.inference.align import ARCFACE_TEMPLATE
from app.stream.appearance import SPLIT_SIMILARITY, best_similarity, view_face
from app.stream.quality import crop_quality, pose_factor
from bench.kiosk import ENROLLED, STRANGERS

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.stream.conftest import LoadPhoto

Frame = np.ndarray
PEOPLE = [(person, streamed[0]) for _, person, _, streamed in ENROLLED] + [
    (person, numbers[0]) for person, numbers in STRANGERS
]


def on_canvas(photo: np.ndarray, shift: tuple[int, int] = (0, 0)) -> Frame:
    canvas = np.full((480, 640, 3), 24, dtype=np.uint8)
    left, top = 195 + shift[0], 115 + shift[1]
    canvas[top : top + photo.shape[0], left : left + photo.shape[1]] = photo
    return canvas


@pytest.fixture(scope="module")
def detect(client: TestClient) -> Callable[[Frame], Detection]:
    engine = client.app.state.streams.engine  # type: ignore[attr-defined]

    def largest(frame: Frame) -> Detection:
        detections = engine.detect(engine.decode(jpeg_bytes(frame)).pixels)
        assert detections, "no face found"
        return max(detections, key=lambda d: d.area)

    return largest


def jpeg_bytes(frame: Frame) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def as_received(frame: Frame) -> Frame:
    """The frame after a JPEG round trip, as the server decodes it."""
    decoded = cv2.imdecode(np.frombuffer(jpeg_bytes(frame), np.uint8), cv2.IMREAD_COLOR)
    return np.asarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def photos(load_photo: LoadPhoto, lfw_photo: LfwPhoto) -> dict[str, np.ndarray]:
    return {person: load_photo(lfw_photo(person, number)) for person, number in PEOPLE}


def signature(detect: Callable[[Frame], Detection], frame: Frame) -> Any:
    received = as_received(frame)
    return view_face(received, detect(frame).landmarks).signature


def test_the_same_face_a_few_pixels_later_looks_the_same(
    detect: Callable[[Frame], Detection], photos: dict[str, np.ndarray]
) -> None:
    for person, photo in photos.items():
        before = [signature(detect, on_canvas(photo, shift)) for shift in [(0, 0), (3, -2)]]
        after = signature(detect, on_canvas(photo, (-4, 3)))
        similarity = best_similarity(after, before)
        assert similarity is not None
        assert similarity >= SPLIT_SIMILARITY, person


def test_somebody_else_at_the_same_place_does_not(
    detect: Callable[[Frame], Detection], photos: dict[str, np.ndarray]
) -> None:
    views = {person: signature(detect, on_canvas(photo)) for person, photo in photos.items()}
    for first, second in itertools.combinations(views, 2):
        similarity = best_similarity(views[first], [views[second]])
        assert similarity is not None
        assert similarity < SPLIT_SIMILARITY, (first, second)


def test_blur_lowers_the_sharpness_and_so_the_quality(
    detect: Callable[[Frame], Detection], photos: dict[str, np.ndarray]
) -> None:
    photo = photos["George_W_Bush"]
    sharp_frame = as_received(on_canvas(photo))
    blurred_frame = as_received(on_canvas(cv2.GaussianBlur(photo, (0, 0), 2.5)))
    sharp, blurred = detect(on_canvas(photo)), detect(blurred_frame)
    sharp_view = view_face(sharp_frame, sharp.landmarks)
    blurred_view = view_face(blurred_frame, blurred.landmarks)
    assert blurred_view.sharpness < sharp_view.sharpness / 2
    assert crop_quality(blurred, blurred_view.sharpness) < crop_quality(sharp, sharp_view.sharpness)


def template_face(size: float, landmarks: np.ndarray = ARCFACE_TEMPLATE) -> Detection:
    scale = size / 112.0
    return Detection(bbox=(0.0, 0.0, size, size), score=1.0, landmarks=landmarks * scale)


def test_a_frontal_face_has_full_pose_and_turning_away_lowers_it() -> None:
    assert pose_factor(ARCFACE_TEMPLATE) == pytest.approx(1.0)
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] += 0.6 * (turned[1, 0] - turned[0, 0])  # nose far towards one eye
    assert 0.0 < pose_factor(turned) < 0.9
    profile = ARCFACE_TEMPLATE.copy()
    profile[2, 0] += 1.5 * (profile[1, 0] - profile[0, 0])
    assert pose_factor(profile) == 0.0
    collapsed = np.repeat(ARCFACE_TEMPLATE[:1], 5, axis=0)  # every landmark at one point
    assert pose_factor(collapsed) == 0.0


def test_quality_grows_with_size_up_to_the_recognizer_input() -> None:
    small, large, huge = (crop_quality(template_face(s), 0.5) for s in (40, 112, 400))
    assert small == pytest.approx(40 / 112)
    assert large == pytest.approx(1.0)
    assert huge == pytest.approx(1.0)
