"""Per-camera figures of the live streams in /metrics, with bounded label cardinality.

A client names its camera (``/stream?camera=door``); names are validated at the
edge, and only the first ``max_cameras`` distinct names of a process get their own
label: later ones are counted under ``other``, so a client inventing names
cannot grow the metrics without bound. Streams without a name count as ``unnamed``.

Series (all labelled ``camera``):

- ``facerec_stream_frames_processed_total``, ``facerec_stream_frames_dropped_total``
  (stale frames skipped, latest frame wins);
- ``facerec_stream_processed_fps``: answered frames per second over the last
  ``FPS_WINDOW_S`` seconds (a gauge computed at scrape time);
- ``facerec_stream_latency_seconds``: receive-to-answer time, a histogram;
- ``facerec_stream_recognitions_total``: faces run through the recognizer;
- ``facerec_stream_identity_checks_total`` (the appearance signal fired and the face
  was embedded on the answer path) and ``facerec_stream_track_splits_total``
  (somebody else had taken the face's place);
- ``facerec_streams_open``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

OTHER_CAMERAS = "other"
UNNAMED_CAMERA = "unnamed"
FPS_WINDOW_S = 5.0
# Stream answers take milliseconds to a few hundred of them.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class CameraLabels:
    """Camera names to label values: the first ``limit`` names, then ``other``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def label(self, camera: str | None) -> str:
        if not camera:
            return UNNAMED_CAMERA
        with self._lock:
            if camera in self._known:
                return camera
            if len(self._known) < self.limit:
                self._known.add(camera)
                return camera
        return OTHER_CAMERAS


class _FpsCollector(Collector):
    def __init__(self, rates: Callable[[], dict[str, float]]) -> None:
        self._rates = rates

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "facerec_stream_processed_fps",
            f"Frames answered per second over the last {FPS_WINDOW_S:.0f} s, per camera",
            labels=["camera"],
        )
        for camera, rate in sorted(self._rates().items()):
            family.add_metric([camera], rate)
        yield family


class _Recognitions(Protocol):
    @property
    def idle(self) -> bool: ...


class StreamMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        max_cameras: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cameras = CameraLabels(max_cameras)
        self._clock = clock
        self._answered: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.processed = Counter(
            "facerec_stream_frames_processed",
            "Stream frames answered",
            ["camera"],
            registry=registry,
        )
        self.dropped = Counter(
            "facerec_stream_frames_dropped",
            "Stream frames skipped because a newer one arrived",
            ["camera"],
            registry=registry,
        )
        self.latency = Histogram(
            "facerec_stream_latency_seconds",
            "Stream frame receive-to-answer time",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.recognitions = Counter(
            "facerec_stream_recognitions",
            "Stream faces run through the recognizer",
            ["camera"],
            registry=registry,
        )
        self.checks = Counter(
            "facerec_stream_identity_checks",
            "Faces embedded at once because their appearance changed",
            ["camera"],
            registry=registry,
        )
        self.splits = Counter(
            "facerec_stream_track_splits",
            "Tracks split because somebody else took the face's place",
            ["camera"],
            registry=registry,
        )
        self.open = Gauge("facerec_streams_open", "Open streams", ["camera"], registry=registry)
        # Background recognitions submitted and not finished, over all open streams: the
        # recognizer's backlog (and what a lock-step client waits on to pace itself).
        self._recognitions: set[_Recognitions] = set()
        self.recognising = Gauge(
            "facerec_stream_recognitions_in_flight",
            "Background face recognitions of open streams submitted and not finished",
            registry=registry,
        )
        self.recognising.set_function(self.recognitions_in_flight)
        registry.register(_FpsCollector(self.rates))

    def stream_opened(self, camera: str) -> None:
        """A stream of this camera started: its series exist from now on (zero counts)."""
        for counter in (self.processed, self.dropped, self.recognitions, self.checks, self.splits):
            counter.labels(camera)
        self.latency.labels(camera)
        self.open.labels(camera).inc()

    def stream_closed(self, camera: str) -> None:
        self.open.labels(camera).dec()

    def frame_answered(
        self, camera: str, *, latency_s: float, dropped: int, checks: int, splits: int
    ) -> None:
        self.processed.labels(camera).inc()
        if dropped:
            self.dropped.labels(camera).inc(dropped)
        if checks:
            self.checks.labels(camera).inc(checks)
            self.recognitions.labels(camera).inc(checks)
        if splits:
            self.splits.labels(camera).inc(splits)
        self.latency.labels(camera).observe(latency_s)
        now = self._clock()
        with self._lock:
            times = self._answered.setdefault(camera, deque())
            times.append(now)
            self._trim(times, now)

    @contextmanager
    def watching(self, recognitions: _Recognitions) -> Iterator[None]:
        """Count ``recognitions`` (one stream's) in the in-flight gauge while it is open."""
        with self._lock:
            self._recognitions.add(recognitions)
        try:
            yield
        finally:
            with self._lock:
                self._recognitions.discard(recognitions)

    def recognitions_in_flight(self) -> float:
        with self._lock:
            return float(sum(not recognitions.idle for recognitions in self._recognitions))

    def recognised(self, camera: str, faces: int) -> None:
        self.recognitions.labels(camera).inc(faces)

    def rates(self) -> dict[str, float]:
        now = self._clock()
        with self._lock:
            for times in self._answered.values():
                self._trim(times, now)
            return {camera: len(times) / FPS_WINDOW_S for camera, times in self._answered.items()}

    @staticmethod
    def _trim(times: deque[float], now: float) -> None:
        while times and times[0] < now - FPS_WINDOW_S:
            times.popleft()
