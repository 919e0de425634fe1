"""Per-camera stream metrics: bounded labels and the processed-fps window."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from app.stream.metrics import (
    FPS_WINDOW_S,
    OTHER_CAMERAS,
    UNNAMED_CAMERA,
    CameraLabels,
    StreamMetrics,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_camera_labels_are_bounded() -> None:
    labels = CameraLabels(2)
    assert [labels.label(name) for name in ("a", "b", "c", "a", None, "")] == [
        "a",
        "b",
        OTHER_CAMERAS,
        "a",
        UNNAMED_CAMERA,
        UNNAMED_CAMERA,
    ]
    with pytest.raises(ValueError, match="limit"):
        CameraLabels(0)


def test_processed_fps_counts_the_answers_of_the_last_window() -> None:
    clock = Clock()
    metrics = StreamMetrics(CollectorRegistry(), 4, clock=clock)
    metrics.stream_opened("door")
    for _ in range(10):
        metrics.frame_answered("door", latency_s=0.02, dropped=1, checks=0, splits=0)
        clock.now += 0.1
    assert metrics.rates() == {"door": pytest.approx(10 / FPS_WINDOW_S)}
    clock.now += FPS_WINDOW_S
    assert metrics.rates() == {"door": 0.0}


def test_the_series_exist_from_the_stream_start_and_add_up() -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry, 4, clock=Clock())
    metrics.stream_opened("door")
    metrics.frame_answered("door", latency_s=0.03, dropped=2, checks=1, splits=1)
    metrics.recognised("door", 2)
    text = generate_latest(registry).decode()
    for line in [
        'facerec_stream_frames_processed_total{camera="door"} 1.0',
        'facerec_stream_frames_dropped_total{camera="door"} 2.0',
        'facerec_stream_identity_checks_total{camera="door"} 1.0',
        'facerec_stream_track_splits_total{camera="door"} 1.0',
        'facerec_stream_recognitions_total{camera="door"} 3.0',
        'facerec_stream_latency_seconds_count{camera="door"} 1.0',
        'facerec_streams_open{camera="door"} 1.0',
    ]:
        assert line in text
    metrics.stream_closed("door")
    assert 'facerec_streams_open{camera="door"} 0.0' in generate_latest(registry).decode()
