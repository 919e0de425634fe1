"""Multi-face tracking by box overlap: IoU, optimal assignment, constant-velocity prediction.

Pure numerics (``iou_matrix``, ``match_boxes``) apart from the stateful ``Tracker``.
Time is the client's frame index, so frames dropped under load (gaps in the
indices) stretch the motion prediction instead of breaking it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from app.core.types import Detection, FloatArray

# A face that moves this much between frames still overlaps its predicted box by
# more than this; two different faces side by side overlap by less.
DEFAULT_MIN_IOU = 0.3
# Motion is extrapolated over at most this many frames: after a long gap (many
# dropped frames) the last box is a better guess than a far-flung prediction.
MAX_PREDICTION_FRAMES = 5
# Weight of the newest displacement in the smoothed velocity (exponential average).
VELOCITY_SMOOTHING = 0.5


def iou_matrix(first: FloatArray, second: FloatArray) -> FloatArray:
    """(N, 4) x (M, 4) boxes (x1, y1, x2, y2) -> (N, M) intersection over union."""
    if first.shape[0] == 0 or second.shape[0] == 0:
        return np.zeros((first.shape[0], second.shape[0]), dtype=np.float32)
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0.0, None).prod(axis=2)
    area_first = np.clip(first[:, 2:] - first[:, :2], 0.0, None).prod(axis=1)
    area_second = np.clip(second[:, 2:] - second[:, :2], 0.0, None).prod(axis=1)
    union = area_first[:, None] + area_second[None, :] - inter
    overlap: FloatArray = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(
        np.float32
    )
    return overlap


def match_boxes(overlap: FloatArray, min_iou: float) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs maximising the total overlap; pairs below ``min_iou``
    are left unmatched (Hungarian assignment, then gating)."""
    if overlap.size == 0:
        return []
    rows, columns = linear_sum_assignment(overlap, maximize=True)
    return [
        (int(row), int(column))
        for row, column in zip(rows, columns, strict=True)
        if overlap[row, column] >= min_iou
    ]


def _as_box(detection: Detection) -> FloatArray:
    return np.asarray(detection.bbox, dtype=np.float32)


@dataclass(slots=True)
class Track:
    """A face followed across frames (mutable, owned by one ``Tracker``)."""

    track_id: int
    bbox: FloatArray  # (4,) last matched box
    velocity: FloatArray  # (4,) box change per frame
    last_frame: int
    misses: int = 0

    def predicted(self, frame_index: int) -> FloatArray:
        frames = min(frame_index - self.last_frame, MAX_PREDICTION_FRAMES)
        return self.bbox + self.velocity * frames

    def follow(self, box: FloatArray, frame_index: int) -> None:
        step = (box - self.bbox) / max(frame_index - self.last_frame, 1)
        self.velocity = VELOCITY_SMOOTHING * step + (1 - VELOCITY_SMOOTHING) * self.velocity
        self.bbox = box
        self.last_frame = frame_index
        self.misses = 0


@dataclass(frozen=True, slots=True)
class TrackedFace:
    track_id: int
    detection: Detection
    is_new: bool


@dataclass(frozen=True, slots=True)
class TrackUpdate:
    """What one frame did to the tracks: faces seen (in detection order) and tracks ended."""

    faces: list[TrackedFace]
    ended: list[int]


class Tracker:
    """Assigns each detection a track id that stays stable while the face moves.

    A detection continues the track whose predicted box (or, failing that, last
    box) it overlaps most, by optimal assignment; unmatched detections start new
    tracks; a track unseen for more than ``max_missed`` processed frames ends.
    """

    def __init__(self, *, min_iou: float = DEFAULT_MIN_IOU, max_missed: int = 5) -> None:
        if not 0 < min_iou <= 1:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.min_iou = min_iou
        self.max_missed = max_missed
        self._tracks: list[Track] = []
        self._next_id = 1
        self._last_frame = -1

    @property
    def active_ids(self) -> list[int]:
        return [track.track_id for track in self._tracks]

    def update(self, detections: Sequence[Detection], frame_index: int) -> TrackUpdate:
        if frame_index <= self._last_frame:
            raise ValueError(f"frame indices must increase: {frame_index} after {self._last_frame}")
        self._last_frame = frame_index
        boxes = (
            np.stack([_as_box(d) for d in detections])
            if detections
            else np.zeros((0, 4), dtype=np.float32)
        )
        pairs = match_boxes(self._overlap(boxes, frame_index), self.min_iou)
        track_of_detection = {column: row for row, column in pairs}
        faces: list[TrackedFace] = []
        for index, detection in enumerate(detections):
            row = track_of_detection.get(index)
            if row is None:
                track = Track(self._next_id, boxes[index], np.zeros(4, np.float32), frame_index)
                self._next_id += 1
                self._tracks.append(track)
                faces.append(TrackedFace(track.track_id, detection, is_new=True))
            else:
                track = self._tracks[row]
                track.follow(boxes[index], frame_index)
                faces.append(TrackedFace(track.track_id, detection, is_new=False))
        return TrackUpdate(faces=faces, ended=self._age(frame_index))

    def split(self, track_id: int) -> int:
        """Give an active track a new id from now on (somebody else took the face's place).

        The box and its motion are kept: the new person stands where the last one
        stood. Returns the new id; raises KeyError for an id that is not active.
        """
        for track in self._tracks:
            if track.track_id == track_id:
                track.track_id = self._next_id
                self._next_id += 1
                return track.track_id
        raise KeyError(track_id)

    def _overlap(self, boxes: FloatArray, frame_index: int) -> FloatArray:
        if not self._tracks:
            return np.zeros((0, boxes.shape[0]), dtype=np.float32)
        predicted = np.stack([track.predicted(frame_index) for track in self._tracks])
        last = np.stack([track.bbox for track in self._tracks])
        overlap: FloatArray = np.maximum(iou_matrix(predicted, boxes), iou_matrix(last, boxes))
        return overlap

    def _age(self, frame_index: int) -> list[int]:
        ended: list[int] = []
        kept: list[Track] = []
        for track in self._tracks:
            if track.last_frame != frame_index:
                track.misses += 1
            if track.misses > self.max_missed:
                ended.append(track.track_id)
            else:
                kept.append(track)
        self._tracks = kept
        return ended
