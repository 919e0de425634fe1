"""Prometheus metrics of one service instance, in its own registry.

One registry per ``Metrics`` (not prometheus_client's global one), so several apps
in one process (tests, benchmarks) never collide. Labels are bounded: routes are
templates (``/subjects/{subject}``), never raw paths; codes are the stable error
codes; collections are the gallery's own (validated names), kept in a registry of
their own that is rendered only for callers allowed to see tenants' names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial, wraps
from typing import ParamSpec, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

P = ParamSpec("P")
T = TypeVar("T")
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
# Request latency: from cheap listings (ms) to multi-photo enrollments (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One inference stage on one photo: decode and align take ms, detect/embed tens of ms.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Faces per embedding batch; the cap is FACEREC_MAX_FACES_PER_IMAGE.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _GalleryCollector(Collector):
    """Faces per collection, read from the gallery at scrape time (no bookkeeping)."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "facerec_gallery_faces", "Enrolled faces per collection", labels=["collection"]
        )
        for collection, faces in self._stats().items():
            family.add_metric([collection], faces)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gallery_registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.request_seconds = Histogram(
            "facerec_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "facerec_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "facerec_http_requests_in_flight", "HTTP requests being served", registry=self.registry
        )
        self.errors = Counter(
            "facerec_errors",
            "Error responses by stable error code",
            ["code"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "facerec_inference_stage_duration_seconds",
            "Time per inference stage (decode, detect, align, embed) per photo",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_faces = Histogram(
            "facerec_embed_batch_faces",
            "Faces per recognizer batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        # Cross-request batches (app/inference/batcher.py): how many requests share one.
        self.batch_requests = Histogram(
            "facerec_recognizer_batch_requests",
            "Requests (photos, stream frames) whose faces ran in one recognizer batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.faces_ignored = Counter(
            "facerec_faces_ignored",
            "Detected faces beyond FACEREC_MAX_FACES_PER_IMAGE (smallest first)",
            registry=self.registry,
        )

    # --- the pipeline's StageObserver ------------------------------------------------------

    def stage_finished(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def batch_embedded(self, faces: int) -> None:
        self.batch_faces.observe(faces)

    def recognizer_batch(self, faces: int, requests: int) -> None:
        self.batch_requests.observe(requests)

    def faces_dropped(self, faces: int) -> None:
        self.faces_ignored.inc(faces)

    # --- wiring and export -----------------------------------------------------------------

    def watch_gallery(self, stats: Callable[[], dict[str, int]]) -> None:
        self.gallery_registry.register(_GalleryCollector(stats))

    def watch_admission(self, in_use: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Admitted inference requests, and inference turns waiting (read at scrape time)."""
        admitted = Gauge(
            "facerec_inference_admitted",
            "Inference requests admitted (running, queued or receiving their body)",
            registry=self.registry,
        )
        admitted.set_function(in_use)
        queued = Gauge(
            "facerec_inference_turns_waiting",
            "Inference turns waiting for a worker",
            registry=self.registry,
        )
        queued.set_function(waiting)

    def watch_swap(
        self,
        faces: Callable[[], tuple[int, int, bool]],
        generation: Callable[[], int],
    ) -> None:
        """A model swap's progress: (faces re-embedded, faces to re-embed, running), and
        the gallery generation serving (read at scrape time)."""
        for name, help_text, pick in (
            ("facerec_swap_faces_done", "Faces re-embedded by the current or last model swap", 0),
            ("facerec_swap_faces_total", "Faces the current or last model swap re-embeds", 1),
            ("facerec_swap_running", "1 while a model activation or rollback runs", 2),
        ):
            gauge = Gauge(name, help_text, registry=self.registry)
            gauge.set_function(partial(_figure, faces, pick))
        active = Gauge(
            "facerec_gallery_generation",
            "The gallery generation serving (0 before any model swap)",
            registry=self.registry,
        )
        active.set_function(lambda: float(generation()))

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def render(self, gallery_detail: bool = False) -> bytes:
        """The exposition; with ``gallery_detail``, faces per collection too."""
        body = generate_latest(self.registry)
        return body + generate_latest(self.gallery_registry) if gallery_detail else body


def _figure(faces: Callable[[], tuple[int, int, bool]], pick: int) -> float:
    return float(faces()[pick])


def timed(metrics: Metrics, stage: str, function: Callable[P, T]) -> Callable[P, T]:
    """``function``, with each call's duration observed as inference ``stage``."""

    @wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            metrics.stage_finished(stage, time.perf_counter() - started)

    return run
