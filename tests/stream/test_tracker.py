"""Tracker numerics and track identity, on hand-made boxes."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.types import Detection
from app.stream.tracker import Tracker, iou_matrix, match_boxes


def box(x: float, y: float, size: float = 100.0) -> Detection:
    return Detection(
        bbox=(x, y, x + size, y + size), score=0.9, landmarks=np.zeros((5, 2), np.float32)
    )


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # nested
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty boxes never overlap
    ],
)
def test_iou_matrix_of_box_pairs(
    first: tuple[float, float, float, float],
    second: tuple[float, float, float, float],
    expected: float,
) -> None:
    assert iou_matrix(boxes(first), boxes(second))[0, 0] == pytest.approx(expected)


def test_iou_matrix_shape_with_no_boxes() -> None:
    assert iou_matrix(boxes(), boxes((0, 0, 1, 1), (1, 1, 2, 2))).shape == (0, 2)


def test_match_boxes_maximises_total_overlap_not_greedy_best() -> None:
    # Greedy would give row 0 its best column 0 (0.6) and leave row 1 with 0.1;
    # the optimum pairs 0-1 and 1-0 (0.5 + 0.5).
    overlap = np.array([[0.6, 0.5], [0.5, 0.1]], dtype=np.float32)
    assert sorted(match_boxes(overlap, min_iou=0.3)) == [(0, 1), (1, 0)]


def test_match_boxes_leaves_pairs_below_min_iou_unmatched() -> None:
    overlap = np.array([[0.9, 0.0], [0.0, 0.2]], dtype=np.float32)
    assert match_boxes(overlap, min_iou=0.3) == [(0, 0)]


def test_a_face_moving_a_few_pixels_per_frame_keeps_its_track_id() -> None:
    tracker = Tracker()
    ids = [tracker.update([box(100 + 6 * i, 80 + 3 * i)], i).faces[0].track_id for i in range(30)]
    assert set(ids) == {1}


def test_new_faces_get_new_ids_and_two_faces_keep_theirs() -> None:
    tracker = Tracker()
    first = tracker.update([box(0, 0), box(300, 0)], 0).faces
    later = tracker.update([box(305, 2), box(4, 1)], 1).faces  # listed in the other order
    assert [f.track_id for f in first] == [1, 2]
    assert all(f.is_new for f in first)
    assert [f.track_id for f in later] == [2, 1]
    assert not any(f.is_new for f in later)


def test_fast_motion_is_followed_through_the_velocity_prediction() -> None:
    # A face moving at 40 px per frame speeds up to 70: consecutive 100 px boxes then
    # overlap by only 0.18 IoU, below min_iou, but the predicted box is close enough.
    positions = [0, 40, 80, 120, 160, 230, 300, 370]
    tracker = Tracker(min_iou=0.3)
    ids = [tracker.update([box(x, 0)], i).faces[0].track_id for i, x in enumerate(positions)]
    assert iou_matrix(boxes((160, 0, 260, 100)), boxes((230, 0, 330, 100)))[0, 0] < 0.3
    assert set(ids) == {1}


def test_prediction_spans_dropped_frames() -> None:
    tracker = Tracker()
    tracker.update([box(0, 0)], 0)
    tracker.update([box(20, 0)], 1)
    # Frames 2 and 3 were dropped: the face moved on by 3 x 20 px meanwhile.
    assert tracker.update([box(80, 0)], 4).faces[0].track_id == 1


def test_a_face_missing_for_a_few_frames_keeps_its_id() -> None:
    tracker = Tracker(max_missed=3)
    tracker.update([box(50, 50)], 0)
    for frame in range(1, 4):
        assert tracker.update([], frame).ended == []
    assert tracker.update([box(52, 50)], 4).faces[0].track_id == 1


def test_a_track_ends_after_max_missed_frames() -> None:
    tracker = Tracker(max_missed=2)
    tracker.update([box(50, 50)], 0)
    assert tracker.update([], 1).ended == []
    assert tracker.update([], 2).ended == []
    assert tracker.update([], 3).ended == [1]
    assert tracker.active_ids == []
    assert tracker.update([box(50, 50)], 4).faces[0].track_id == 2


def test_frame_indices_must_increase() -> None:
    tracker = Tracker()
    tracker.update([], 5)
    with pytest.raises(ValueError, match="increase"):
        tracker.update([], 5)


@pytest.mark.parametrize(("min_iou", "max_missed"), [(0.0, 1), (1.5, 1), (0.3, -1)])
def test_tracker_rejects_invalid_parameters(min_iou: float, max_missed: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Tracker(min_iou=min_iou, max_missed=max_missed)


def test_a_split_track_gets_a_new_id_and_keeps_its_place() -> None:
    tracker = Tracker()
    (first,) = tracker.update([box(100, 100)], 0).faces
    new_id = tracker.split(first.track_id)
    assert new_id != first.track_id
    assert tracker.active_ids == [new_id]
    # The next frame at the same place continues the new id, not a third one.
    (after,) = tracker.update([box(103, 101)], 1).faces
    assert (after.track_id, after.is_new) == (new_id, False)
    with pytest.raises(KeyError):
        tracker.split(first.track_id)
