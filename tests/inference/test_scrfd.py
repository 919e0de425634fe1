"""SCRFD numerics with hand-made arrays: input size, letterbox, anchors, decode, NMS.

The detector class is exercised here only through a fake session (to pin the
close-up fallback's coordinates); real models are in test_reference_parity.py.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from app.errors import ModelError
from app.inference.catalog import resolve_manifest
from app.inference.manifest import DetectorInput, DetectorSpec, ModelManifest
from app.inference.scrfd import (
    CLOSEUP_CANVAS_FACTOR,
    ScrfdDetector,
    anchor_centers,
    choose_input_size,
    decode_boxes,
    decode_landmarks,
    decode_outputs,
    letterbox,
    nms,
    round_up,
    to_tensor,
)

ADAPTIVE = DetectorInput(name="input.1", size_policy="adaptive", max_side=640, stride=32)
SPEC = DetectorSpec()  # strides 8/16/32, 2 anchors per location, 5 landmarks, score >= 0.5


def f32(values: Any) -> NDArray[np.float32]:
    return np.asarray(values, dtype=np.float32)


# --- choose_input_size ------------------------------------------------------------


def test_fixed_policy_always_uses_the_manifest_size() -> None:
    spec = DetectorInput(name="input.1", size_policy="fixed", size=(640, 480))

    assert choose_input_size(100, 3000, spec) == (640, 480)
    assert choose_input_size(1920, 1080, spec) == (640, 480)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (640, 480, (640, 480)),  # already a multiple of the stride: used as is
        (1280, 960, (640, 480)),  # long side capped at max_side, aspect kept
        (960, 1280, (480, 640)),  # portrait
        (4000, 1000, (640, 160)),
        (500, 375, (512, 384)),  # never upscaled: only rounded up to the stride
        (112, 112, (128, 128)),
        (10, 10, (32, 32)),  # at least one stride
        (1000, 30, (640, 32)),  # 19.2 rows -> one stride
    ],
)
def test_adaptive_policy_keeps_scale_caps_long_side_and_rounds_to_stride(
    width: int, height: int, expected: tuple[int, int]
) -> None:
    assert choose_input_size(width, height, ADAPTIVE) == expected


@pytest.mark.parametrize(("width", "height"), [(37, 61), (333, 200), (1500, 999), (641, 640)])
def test_adaptive_size_is_never_beyond_the_photo_rounded_up_nor_the_cap(
    width: int, height: int
) -> None:
    input_width, input_height = choose_input_size(width, height, ADAPTIVE)

    assert input_width % ADAPTIVE.stride == 0
    assert input_height % ADAPTIVE.stride == 0
    assert input_width <= max(round_up(width, 32), 32)
    assert input_height <= max(round_up(height, 32), 32)
    assert max(input_width, input_height) <= ADAPTIVE.max_side


def test_adaptive_policy_upscales_small_photos_to_min_side_only() -> None:
    spec = ADAPTIVE.model_copy(update={"min_side": 320})

    assert choose_input_size(100, 50, spec) == (320, 160)
    assert choose_input_size(400, 300, spec) == (416, 320)  # already above: untouched


def test_min_side_never_exceeds_max_side() -> None:
    spec = ADAPTIVE.model_copy(update={"min_side": 1024, "max_side": 640})

    assert choose_input_size(100, 100, spec) == (640, 640)


def test_adaptive_policy_rounds_to_the_manifest_stride() -> None:
    spec = ADAPTIVE.model_copy(update={"stride": 64})

    assert choose_input_size(500, 375, spec) == (512, 384)
    assert choose_input_size(200, 70, spec) == (256, 128)


# --- letterbox --------------------------------------------------------------------


def test_letterbox_places_a_wide_photo_top_left_and_pads_with_zeros() -> None:
    image = np.full((100, 200, 3), 200, dtype=np.uint8)

    canvas, scale = letterbox(image, (64, 64))

    assert canvas.shape == (64, 64, 3)
    assert canvas.dtype == np.uint8
    assert scale == pytest.approx(32 / 100)
    assert (canvas[:32, :64] == 200).all()
    assert (canvas[32:] == 0).all()


def test_letterbox_places_a_tall_photo_top_left_and_pads_with_zeros() -> None:
    image = np.full((200, 100, 3), 77, dtype=np.uint8)

    canvas, scale = letterbox(image, (96, 64))  # (width, height)

    assert canvas.shape == (64, 96, 3)
    assert scale == pytest.approx(64 / 200)
    assert (canvas[:, :32] == 77).all()
    assert (canvas[:, 32:] == 0).all()


def test_letterbox_keeps_the_aspect_ratio() -> None:
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    image[100:200, 100:300] = 255  # a 200x100 white rectangle

    canvas, scale = letterbox(image, (640, 640))

    rows, cols = np.nonzero(canvas[:, :, 0] > 127)
    assert scale == pytest.approx(1.6)
    assert cols.max() - cols.min() + 1 == pytest.approx(320, abs=2)
    assert rows.max() - rows.min() + 1 == pytest.approx(160, abs=2)
    assert (canvas[480:] == 0).all()


def test_letterbox_of_an_exact_fit_is_a_plain_resize() -> None:
    image = np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8)

    canvas, scale = letterbox(image, (64, 48))

    assert scale == 1.0
    np.testing.assert_array_equal(canvas, image)


# --- anchors and decoding ---------------------------------------------------------


def test_anchor_centers_are_row_major_x_then_y_repeated_per_anchor() -> None:
    centers = anchor_centers(2, 3, 8, 2)

    expected = [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]]
    np.testing.assert_array_equal(centers, np.repeat(f32(expected), 2, axis=0))
    assert centers.dtype == np.float32


def test_anchor_centers_with_one_anchor_per_location_are_not_repeated() -> None:
    centers = anchor_centers(2, 2, 16, 1)

    np.testing.assert_array_equal(centers, f32([[0, 0], [16, 0], [0, 16], [16, 16]]))


def test_anchor_centers_are_cached_read_only() -> None:
    centers = anchor_centers(4, 4, 8, 2)

    assert anchor_centers(4, 4, 8, 2) is centers
    with pytest.raises(ValueError, match="read-only"):
        centers[0, 0] = 1.0


def test_decode_boxes_subtracts_left_top_and_adds_right_bottom() -> None:
    centers = f32([[10, 20], [0, 0]])
    distances = f32([[1, 2, 3, 4], [5, 5, 5, 5]])

    np.testing.assert_array_equal(
        decode_boxes(centers, distances), f32([[9, 18, 13, 24], [-5, -5, 5, 5]])
    )


def test_decode_landmarks_adds_offsets_per_point() -> None:
    centers = f32([[10, 20]])
    distances = f32([[1, 2, -3, 4, 0, 0, 5, -6, 7, 8]])

    landmarks = decode_landmarks(centers, distances)

    assert landmarks.shape == (1, 5, 2)
    np.testing.assert_array_equal(
        landmarks[0], f32([[11, 22], [7, 24], [10, 20], [15, 14], [17, 28]])
    )


# --- NMS --------------------------------------------------------------------------


def test_nms_suppresses_an_overlap_above_the_threshold_and_keeps_the_better_score() -> None:
    boxes = f32([[0, 0, 9, 9], [1, 1, 10, 10]])  # IoU 81/119 = 0.68 (+1 pixel areas)

    assert nms(boxes, f32([0.8, 0.9]), 0.4) == [1]


def test_nms_keeps_an_overlap_below_the_threshold() -> None:
    boxes = f32([[0, 0, 9, 9], [0, 5, 9, 14]])  # IoU 50/150 = 0.33

    assert nms(boxes, f32([0.9, 0.8]), 0.4) == [0, 1]
    assert nms(boxes, f32([0.9, 0.8]), 0.3) == [0]


def test_nms_keeps_disjoint_boxes_ordered_by_score() -> None:
    boxes = f32([[0, 0, 9, 9], [20, 20, 29, 29], [40, 0, 49, 9], [1, 1, 10, 10]])
    scores = f32([0.6, 0.9, 0.7, 0.65])

    assert nms(boxes, scores, 0.4) == [1, 2, 3]


def test_nms_of_nothing_keeps_nothing() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4) == []


# --- decode_outputs ---------------------------------------------------------------

# A 64x32 (W x H) input: 8x4, 4x2 and 2x1 cells at strides 8, 16, 32, two anchors each.
TINY_INPUT = (64, 32)
TINY_ANCHORS = {8: 64, 16: 16, 32: 4}


def empty_outputs(anchors: dict[int, int] = TINY_ANCHORS) -> list[NDArray[np.float32]]:
    """SCRFD's 9 outputs (scores, boxes, landmarks per stride) with nothing in them."""
    counts = list(anchors.values())
    return (
        [np.zeros((n, 1), np.float32) for n in counts]
        + [np.zeros((n, 4), np.float32) for n in counts]
        + [np.zeros((n, 10), np.float32) for n in counts]
    )


def test_decode_outputs_turns_one_confident_anchor_into_its_box_and_landmarks() -> None:
    outputs = empty_outputs()
    # Stride 16, cell (row 1, col 2), second anchor: row-major index (1*4 + 2)*2 + 1 = 13,
    # centre (32, 16). Distances are in strides.
    outputs[1][13] = 0.9
    outputs[4][13] = [0.5, 0.25, 1.0, 0.75]
    outputs[7][13] = [-1, -1, 1, -1, 0, 0, -1, 1, 1, 1]
    outputs[0][5] = 0.49  # below the score threshold: dropped

    boxes, scores, landmarks = decode_outputs(outputs, TINY_INPUT, SPEC)

    np.testing.assert_allclose(scores, [0.9])
    np.testing.assert_allclose(boxes, [[24, 12, 48, 28]])
    np.testing.assert_allclose(landmarks, [[[16, 0], [48, 0], [32, 16], [16, 32], [48, 32]]])
    assert boxes.dtype == scores.dtype == landmarks.dtype == np.float32


def test_decode_outputs_keeps_scores_at_the_threshold_across_levels() -> None:
    outputs = empty_outputs()
    outputs[0][0] = 0.5
    outputs[2][3] = 0.7  # stride 32, cell (0, 1), second anchor: centre (32, 0)

    boxes, scores, landmarks = decode_outputs(outputs, TINY_INPUT, SPEC)

    np.testing.assert_allclose(scores, [0.5, 0.7])
    np.testing.assert_allclose(boxes, [[0, 0, 0, 0], [32, 0, 32, 0]])
    assert landmarks.shape == (2, 5, 2)


def test_decode_outputs_of_an_empty_picture_is_empty() -> None:
    boxes, scores, landmarks = decode_outputs(empty_outputs(), TINY_INPUT, SPEC)

    assert boxes.shape == (0, 4)
    assert scores.shape == (0,)
    assert landmarks.shape == (0, 5, 2)


@pytest.mark.parametrize("count", [6, 8, 10, 15])
def test_decode_outputs_refuses_the_wrong_number_of_outputs(count: int) -> None:
    outputs = (empty_outputs() * 2)[:count]

    with pytest.raises(ModelError, match="9 outputs"):
        decode_outputs(outputs, TINY_INPUT, SPEC)


def test_decode_outputs_refuses_outputs_for_another_input_size() -> None:
    with pytest.raises(ModelError, match="stride 8"):
        decode_outputs(empty_outputs(), (64, 64), SPEC)


# --- to_tensor --------------------------------------------------------------------


def test_to_tensor_normalises_into_nchw_in_the_model_colour_order() -> None:
    canvas = np.zeros((2, 3, 3), dtype=np.uint8)
    canvas[..., 0], canvas[..., 1], canvas[..., 2] = 255, 127, 0  # R, G, B
    mean, std = f32([127.5] * 3), f32([128.0] * 3)

    rgb = to_tensor(canvas, mean, std, bgr=False)
    bgr = to_tensor(canvas, mean, std, bgr=True)

    assert rgb.shape == (1, 3, 2, 3)
    assert rgb.dtype == np.float32
    assert rgb.flags.c_contiguous
    np.testing.assert_allclose(rgb[0, :, 0, 0], [127.5 / 128, -0.5 / 128, -127.5 / 128])
    np.testing.assert_array_equal(bgr[0], rgb[0, ::-1])


@pytest.mark.parametrize("bgr", [False, True])
def test_to_tensor_native_path_is_bit_identical_to_the_formula(bgr: bool) -> None:
    canvas = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mean, std = f32([127.5, 120.0, 110.25]), f32([128.0] * 3)
    pixels = canvas[:, :, ::-1] if bgr else canvas
    expected = ((pixels.astype(np.float32) - mean) * (1.0 / std)).transpose(2, 0, 1)[None]

    np.testing.assert_array_equal(to_tensor(canvas, mean, std, bgr), expected)


def test_to_tensor_handles_a_different_std_per_channel() -> None:
    canvas = np.full((4, 4, 3), 200, dtype=np.uint8)
    mean, std = f32([100.0] * 3), f32([50.0, 100.0, 200.0])

    np.testing.assert_allclose(to_tensor(canvas, mean, std, bgr=False)[0, :, 0, 0], [2, 1, 0.5])


# --- ScrfdDetector orchestration with a fake session ------------------------------


class FaceAtInputPoint:
    """A fake SCRFD session: no face at the first call, then one face at a fixed input point.

    The face is reported by the stride-8 anchor whose centre is ``center`` (input
    pixels), with a 16x16 box and all five landmarks on the centre; no face ever
    when ``center`` is None.
    """

    def __init__(self, center: tuple[int, int] | None) -> None:
        self.center = center
        self.input_sizes: list[tuple[int, int]] = []

    def run(self, feed: dict[str, NDArray[np.float32]]) -> list[Any]:
        (tensor,) = feed.values()
        height, width = tensor.shape[2:]
        self.input_sizes.append((width, height))
        outputs = empty_outputs({s: (height // s) * (width // s) * 2 for s in (8, 16, 32)})
        if self.center is not None and len(self.input_sizes) > 1:
            x, y = self.center
            anchor = ((y // 8) * (width // 8) + x // 8) * 2
            outputs[0][anchor] = 0.95
            outputs[3][anchor] = 1.0  # 8 pixels each side
        return outputs


@pytest.fixture(scope="module")
def detector_manifest() -> ModelManifest:
    return resolve_manifest("scrfd_500m")[0]


def test_detect_falls_back_to_a_padded_canvas_and_maps_the_face_back(
    detector_manifest: ModelManifest,
) -> None:
    image = np.zeros((100, 160, 3), dtype=np.uint8)
    side = int(160 * CLOSEUP_CANVAS_FACTOR)  # 320: the photo sits at (80, 110) in it
    session = FaceAtInputPoint(center=(160, 160))  # the canvas centre = the photo's centre
    detector = ScrfdDetector(session, detector_manifest)  # type: ignore[arg-type]

    (face,) = detector.detect(image)

    assert session.input_sizes == [(160, 128), (side, side)]
    assert face.score == pytest.approx(0.95)
    assert face.bbox == pytest.approx((72.0, 42.0, 88.0, 58.0))
    np.testing.assert_allclose(face.landmarks, [[80, 50]] * 5)


def test_detect_at_an_explicit_input_size_does_not_fall_back(
    detector_manifest: ModelManifest,
) -> None:
    session = FaceAtInputPoint(center=(80, 64))
    detector = ScrfdDetector(session, detector_manifest)  # type: ignore[arg-type]

    assert detector.detect(np.zeros((100, 160, 3), np.uint8), (160, 128)) == []
    assert session.input_sizes == [(160, 128)]


def test_the_close_up_pass_over_a_large_photo_costs_no_more_memory_than_the_photo(
    detector_manifest: ModelManifest,
) -> None:
    # A large photo without a face goes through the close-up pass too. The network
    # sees at most max_side pixels, so the padded canvas need not be built at the
    # photo's full resolution (2x its sides: 4x its memory, ~600 MB at the service's
    # 50-megapixel limit, per request).
    image = np.full((3000, 4000, 3), 128, dtype=np.uint8)
    budget = image.nbytes  # one more copy of the photo at most
    detector = ScrfdDetector(FaceAtInputPoint(center=None), detector_manifest)  # type: ignore[arg-type]

    tracemalloc.start()
    try:
        assert detector.detect(image) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak <= budget


def test_detector_refuses_a_recognizer_manifest() -> None:
    recognizer, _ = resolve_manifest("w600k_mbf_int8")

    with pytest.raises(ModelError, match="not a detector"):
        ScrfdDetector(FaceAtInputPoint(None), recognizer)  # type: ignore[arg-type]
