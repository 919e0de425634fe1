"""SCRFD face detector: pure numerics (sizes, letterbox, anchors, decode, NMS) and
a thin session wrapper.

Output layout (InsightFace SCRFD with landmarks): for each stride in (8, 16, 32)
a score map, then for each stride the box distances, then the landmark
distances, flattened to rows of ``anchors_per_location`` anchors per cell.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray

from app.core.types import Detection, FloatArray, ImageArray
from app.errors import ModelError
from app.inference.engines.base import EngineSession
from app.inference.manifest import DetectorInput, DetectorSpec, ModelManifest

# Close-ups (a face filling the frame) are missed by SCRFD: its anchors expect
# context around a face. When a first pass finds nothing, the photo is placed
# in the middle of a canvas this many times its size and searched again.
CLOSEUP_CANVAS_FACTOR = 2.0
# A face whose box spans this fraction of the photo's width or height is often
# found, but with a low score and loose landmarks (measured on CFP frontal
# close-ups: scores 0.51-0.58 for faces filling 70% x 90% of the frame, against
# 0.8-0.9 once padded). Such a face scored below CLOSEUP_SCORE (the enrollment
# gate's default) sends the photo through the padded pass too; for each face the
# better-scored detection of the two passes is kept. A confident frame-filling face
# (many LFW photos) keeps its one pass: at 0.7, LFW through /embed fell 0.1 point.
CLOSEUP_FILL = 0.6
CLOSEUP_SCORE = 0.6
# Two detections of the two passes are the same face above this overlap.
SAME_FACE_IOU = 0.5


def round_up(value: float, multiple: int) -> int:
    return int(np.ceil(value / multiple) * multiple)


def choose_input_size(width: int, height: int, spec: DetectorInput) -> tuple[int, int]:
    """Network input (W, H) for a photo, following the manifest's size policy.

    ``adaptive``: the photo's own scale (never upscaled beyond ``min_side``),
    long side capped at ``max_side``, each side rounded up to the stride. Small
    photos are then not blown up (which costs time and, measured on LFW, landmark
    accuracy) and large ones are not searched at needless resolution.
    """
    if spec.size_policy == "fixed":
        return spec.size
    long_side = max(width, height)
    scale = min(1.0, spec.max_side / long_side)
    if spec.min_side and long_side * scale < spec.min_side:
        scale = min(spec.min_side, spec.max_side) / long_side
    return (
        max(spec.stride, round_up(width * scale, spec.stride)),
        max(spec.stride, round_up(height * scale, spec.stride)),
    )


def letterbox(image: ImageArray, input_size: tuple[int, int]) -> tuple[ImageArray, float]:
    """Resize keeping the aspect ratio into the top-left of a zero canvas of ``input_size``.

    Returns the canvas and the scale from original to canvas pixels. The
    arithmetic follows InsightFace's reference so detections agree with it.
    """
    input_width, input_height = input_size
    image_ratio = image.shape[0] / image.shape[1]
    if image_ratio > input_height / input_width:
        new_height = input_height
        new_width = int(new_height / image_ratio)
    else:
        new_width = input_width
        new_height = int(new_width * image_ratio)
    new_width, new_height = max(new_width, 1), max(new_height, 1)
    scale = new_height / image.shape[0]
    canvas = np.zeros((input_height, input_width, 3), dtype=np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
    return canvas, scale


@lru_cache(maxsize=128)
def anchor_centers(rows: int, cols: int, stride: int, per_location: int) -> FloatArray:
    """(rows*cols*per_location, 2) anchor centres (x, y) in input pixels."""
    ys, xs = np.mgrid[:rows, :cols]
    grid = np.stack([xs, ys], axis=-1).astype(np.float32)
    centers: FloatArray = (grid * stride).reshape(-1, 2)
    if per_location > 1:
        centers = np.repeat(centers, per_location, axis=0)
    centers.setflags(write=False)
    return centers


def decode_boxes(centers: FloatArray, distances: FloatArray) -> FloatArray:
    """(left, top, right, bottom) distances from centres -> (x1, y1, x2, y2)."""
    return np.concatenate([centers - distances[:, :2], centers + distances[:, 2:4]], axis=1)


def decode_landmarks(centers: FloatArray, distances: FloatArray) -> FloatArray:
    """(dx, dy) offsets per point from centres -> (N, points, 2)."""
    offsets = distances.reshape(distances.shape[0], distances.shape[1] // 2, 2)
    return offsets + centers[:, None, :]


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best score first.

    Areas use the +1 pixel convention of the reference implementation.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        inter_w = np.maximum(
            0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1
        )
        inter_h = np.maximum(
            0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        )
        inter = inter_w * inter_h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= iou_threshold]
    return keep


def decode_outputs(
    outputs: list[NDArray[np.float32]],
    input_size: tuple[int, int],
    spec: DetectorSpec,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Raw network outputs -> candidate (boxes, scores, landmarks) above the score threshold."""
    levels = len(spec.strides)
    if len(outputs) != 3 * levels:
        raise ModelError(f"SCRFD should have {3 * levels} outputs, got {len(outputs)}")
    input_width, input_height = input_size
    boxes, scores, landmarks = [], [], []
    for level, stride in enumerate(spec.strides):
        level_scores = outputs[level].reshape(-1)
        box_distances = outputs[level + levels].reshape(-1, 4) * stride
        landmark_distances = outputs[level + 2 * levels].reshape(-1, 2 * spec.landmarks) * stride
        centers = anchor_centers(
            input_height // stride, input_width // stride, stride, spec.anchors_per_location
        )
        if centers.shape[0] != level_scores.shape[0]:
            raise ModelError(
                f"stride {stride}: {level_scores.shape[0]} scores for {centers.shape[0]} anchors"
            )
        positive = np.flatnonzero(level_scores >= spec.score_threshold)
        scores.append(level_scores[positive])
        boxes.append(decode_boxes(centers[positive], box_distances[positive]))
        landmarks.append(decode_landmarks(centers[positive], landmark_distances[positive]))
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(landmarks).astype(np.float32),
    )


def box_iou(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (continuous coordinates)."""
    inter_w = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    inter_h = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    inter = inter_w * inter_h
    area_first = max(0.0, first[2] - first[0]) * max(0.0, first[3] - first[1])
    area_second = max(0.0, second[2] - second[0]) * max(0.0, second[3] - second[1])
    union = area_first + area_second - inter
    return inter / union if union > 0 else 0.0


def fills_frame(detections: list[Detection], width: int, height: int, fill: float) -> bool:
    """True when some face's box spans at least ``fill`` of the photo's width or height."""
    return any(d.width >= fill * width or d.height >= fill * height for d in detections)


def merge_passes(
    first: list[Detection], padded: list[Detection], same_face_iou: float
) -> list[Detection]:
    """Per face, the better-scored detection of the two passes; best score first.

    A padded-pass face overlapping a first-pass face by ``same_face_iou`` or more
    replaces it when its score is higher; one that overlaps none is added.
    """
    merged = list(first)
    for candidate in padded:
        same = [k for k, d in enumerate(merged) if box_iou(d.bbox, candidate.bbox) >= same_face_iou]
        if not same:
            merged.append(candidate)
        elif candidate.score > merged[same[0]].score:
            merged[same[0]] = candidate
    return sorted(merged, key=lambda d: d.score, reverse=True)


# Landmark order after a horizontal mirror: the left eye becomes the right one, etc.
MIRRORED_LANDMARKS = (1, 0, 2, 4, 3)


def unmirror(detection: Detection, width: int) -> Detection:
    """A detection found in the horizontally mirrored photo, in the photo's coordinates.

    Pixel centres: column ``x`` of the mirror is column ``width - 1 - x`` of the photo.
    Landmarks swap sides (left eye <-> right eye, left <-> right mouth corner).
    """
    x1, y1, x2, y2 = detection.bbox
    edge = width - 1
    landmarks = detection.landmarks[list(MIRRORED_LANDMARKS)].copy()
    landmarks[:, 0] = edge - landmarks[:, 0]
    return Detection(
        bbox=(edge - x2, y1, edge - x1, y2), score=detection.score, landmarks=landmarks
    )


def average_landmarks(
    detections: list[Detection], mirrored: list[Detection], same_face_iou: float
) -> list[Detection]:
    """Each detection with its landmarks averaged with those of the same face in
    ``mirrored`` (already in the photo's coordinates); unmatched ones unchanged."""
    refined = []
    for detection in detections:
        overlaps = [box_iou(detection.bbox, other.bbox) for other in mirrored]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best < 0 or overlaps[best] < same_face_iou:
            refined.append(detection)
            continue
        points = ((detection.landmarks + mirrored[best].landmarks) / 2).astype(np.float32)
        refined.append(Detection(bbox=detection.bbox, score=detection.score, landmarks=points))
    return refined


def to_tensor(canvas: ImageArray, mean: FloatArray, std: FloatArray, bgr: bool) -> FloatArray:
    """HWC uint8 (RGB) -> 1CHW float32 normalised, in the model's colour order.

    ``(x - mean) * (1 / std)``, the operation order of ``cv2.dnn.blobFromImage``
    that the reference uses: bit-identical inputs give bit-identical landmarks.
    With one std for all channels (every SCRFD release) blobFromImage itself does
    it in one native pass, several times faster than the numpy expression.
    """
    if np.all(std == std[0]):
        blob = cv2.dnn.blobFromImage(
            canvas,
            scalefactor=float(np.float32(1.0) / std[0]),
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            swapRB=bgr,
        )
        return np.asarray(blob, dtype=np.float32)
    pixels = canvas[:, :, ::-1] if bgr else canvas
    normalised = (pixels.astype(np.float32) - mean) * (1.0 / std)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])


class ScrfdDetector:
    """Runs an SCRFD session on one photo; all numerics live in the functions above."""

    def __init__(self, session: EngineSession, manifest: ModelManifest) -> None:
        if not isinstance(manifest.input, DetectorInput) or manifest.detector is None:
            raise ModelError(f"{manifest.name} is not a detector manifest")
        self.manifest = manifest
        self._session = session
        self._input: DetectorInput = manifest.input
        self._spec: DetectorSpec = manifest.detector
        self._mean = np.asarray(manifest.preprocess.mean, dtype=np.float32)
        self._std = np.asarray(manifest.preprocess.std, dtype=np.float32)
        self._bgr = manifest.preprocess.color_order == "BGR"

    def detect(
        self, image: ImageArray, input_size: tuple[int, int] | None = None
    ) -> list[Detection]:
        """All faces in an RGB image, best score first, in image coordinates."""
        height, width = image.shape[:2]
        size = input_size or choose_input_size(width, height, self._input)
        detections = self._detect_at(image, size)
        if input_size is not None:
            return detections
        if not detections:
            return self._detect_closeup(image)
        if fills_frame(
            [d for d in detections if d.score < CLOSEUP_SCORE], width, height, CLOSEUP_FILL
        ):
            return merge_passes(detections, self._detect_closeup(image), SAME_FACE_IOU)
        return detections

    def refine_landmarks(self, image: ImageArray, detections: list[Detection]) -> list[Detection]:
        """Landmarks averaged with the mirrored photo's (``augment.landmarks: mirror``).

        One more pass over the mirrored photo, whatever the number of faces; faces
        the mirrored pass does not find keep their landmarks.
        """
        if not detections:
            return detections
        width = image.shape[1]
        mirrored = np.ascontiguousarray(image[:, ::-1])
        found = [unmirror(d, width) for d in self.detect(mirrored)]
        return average_landmarks(detections, found, SAME_FACE_IOU)

    def _detect_at(self, image: ImageArray, input_size: tuple[int, int]) -> list[Detection]:
        canvas, scale = letterbox(image, input_size)
        tensor = to_tensor(canvas, self._mean, self._std, self._bgr)
        outputs = self._session.run({self._input.name: tensor})
        boxes, scores, landmarks = decode_outputs(outputs, input_size, self._spec)
        if scores.size == 0:
            return []
        boxes /= scale
        landmarks /= scale
        keep = nms(boxes, scores, self._spec.nms_iou)
        return [
            Detection(
                bbox=(
                    float(boxes[i, 0]),
                    float(boxes[i, 1]),
                    float(boxes[i, 2]),
                    float(boxes[i, 3]),
                ),
                score=float(scores[i]),
                landmarks=landmarks[i],
            )
            for i in keep
        ]

    def _detect_closeup(self, image: ImageArray) -> list[Detection]:
        """Second pass for close-ups: the photo centred on a larger zero canvas.

        The photo is first shrunk so that the canvas is no larger than the
        network input: a large photo without faces costs no extra memory.
        """
        height, width = image.shape[:2]
        long_side = max(height, width)
        shrink = min(1.0, self._input.max_side / (long_side * CLOSEUP_CANVAS_FACTOR))
        if shrink < 1.0:
            size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
            image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
            height, width = image.shape[:2]
        side = int(max(height, width) * CLOSEUP_CANVAS_FACTOR)
        top, left = (side - height) // 2, (side - width) // 2
        canvas = np.zeros((side, side, 3), dtype=np.uint8)
        canvas[top : top + height, left : left + width] = image
        found = self._detect_at(canvas, choose_input_size(side, side, self._input))
        shift = np.array([left, top], dtype=np.float32)
        # Back to the original photo: undo the padding, then the shrink.
        return [
            Detection(
                bbox=(
                    (d.bbox[0] - left) / shrink,
                    (d.bbox[1] - top) / shrink,
                    (d.bbox[2] - left) / shrink,
                    (d.bbox[3] - top) / shrink,
                ),
                score=d.score,
                landmarks=(d.landmarks - shift) / shrink,
            )
            for d in found
        ]
