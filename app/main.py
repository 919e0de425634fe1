"""Composition root: build the service from Settings in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio
import faiss
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.api import gallery as gallery_routes
from app.api import health as health_routes
from app.api import keys as key_routes
from app.api import metrics as metrics_routes
from app.api import pages as page_routes
from app.api import recognition as recognition_routes
from app.api import stream as stream_routes
from app.api.access import AccessMiddleware
from app.api.docs import install_docs
from app.api.handlers import install_error_handlers
from app.api.limits import (
    AdmissionGate,
    AdmissionMiddleware,
    BodySizeLimitMiddleware,
    BodyTimeoutMiddleware,
    FairTurns,
)
from app.api.openapi import install_openapi
from app.auth.bootstrap import open_guard
from app.auth.dependencies import API_KEY_HEADER
from app.auth.guard import Guard
from app.auth.keystore import KeyStore
from app.config import Settings
from app.core.pipeline import FacePipeline
from app.core.service import FaceService, QualityGate
from app.gallery import Gallery, open_gallery
from app.inference.align import align_face
from app.inference.image import declared_pixels, decode_image
from app.inference.loader import LoadedModel, build_detector, build_embedder, load_model
from app.inference.session import RuntimeOptions
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics, timed
from app.observability.middleware import RequestContextMiddleware
from app.stream.hub import StreamHub, StreamSlots, StreamTimeouts, scaled_detector
from app.stream.metrics import StreamMetrics
from app.stream.reid import ReidPolicy
from app.stream.session import StreamEngine, TrackRule, VoteRule
from app.stream.unknowns import UnknownStore

if TYPE_CHECKING:
    from app.storage.postgres.database import Database

logger = logging.getLogger("app")


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything the routes need, built once per process in the lifespan."""

    service: FaceService
    detector: LoadedModel
    recognizer: LoadedModel
    settings: Settings
    inference_limiter: anyio.CapacityLimiter
    guard: Guard
    metrics: Metrics
    admission: AdmissionGate
    turns: FairTurns
    # The PostgreSQL connections gallery and keys share (FACEREC_DATABASE_URL), or None.
    database: Database | None = None

    def close(self) -> None:
        if self.guard.store is not None:
            self.guard.store.close()
        self.service.gallery.close()
        if self.database is not None:
            self.database.close()


def load_models(settings: Settings) -> tuple[LoadedModel, LoadedModel]:
    """The configured detector and recognizer, sessions sized from the settings."""
    threads = settings.resolved_intra_op_threads()
    options = RuntimeOptions(providers=tuple(settings.providers), intra_op_threads=threads)
    # FAISS searches run inside the same bounded workers as inference: give them
    # the same share of cores instead of one OpenMP thread per core each.
    faiss.omp_set_num_threads(threads)
    detector, recognizer = (
        load_model(
            ref,
            kind,
            models_dir=settings.models_dir,
            catalog_dir=settings.catalog_dir,
            options=options,
        )
        for ref, kind in ((settings.detector, "detector"), (settings.recognizer, "recognizer"))
    )
    return detector, recognizer


def open_configured_gallery(
    settings: Settings, *, model_id: str, dim: int, database: Database | None
) -> Gallery:
    """The gallery the settings point at, for embeddings of ``model_id`` (server and CLI).

    ``database`` is the shared PostgreSQL (``open_shared_database``) or None for the
    embedded gallery under ``data_dir``; the caller owns and closes it."""
    if database is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_gallery(
        data_dir=settings.data_dir,
        model_id=model_id,
        dim=dim,
        database=database,
        ef_search=settings.database_ef_search,
    )


def build_service(
    settings: Settings,
    detector: LoadedModel,
    recognizer: LoadedModel,
    gallery: Gallery,
    metrics: Metrics,
) -> FaceService:
    """Enroll / identify / verify on the loaded models and the gallery (server and CLI)."""
    manifest = recognizer.manifest
    assert manifest.thresholds is not None  # the manifest validator requires it
    pipeline = FacePipeline(
        build_detector(detector),
        build_embedder(recognizer),
        align_face,
        max_faces=settings.max_faces_per_image,
        observer=metrics,
    )
    threshold = (
        settings.match_threshold
        if settings.match_threshold is not None
        else manifest.thresholds.match
    )
    return FaceService(
        pipeline,
        gallery,
        timed(
            metrics,
            "decode",
            partial(
                decode_image,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
            ),
        ),
        threshold=threshold,
        gate=QualityGate(
            min_face_size=settings.min_face_size,
            min_det_score=settings.min_det_score,
            min_quality=settings.min_quality,
        ),
        store_aligned_crops=settings.store_aligned_crops,
        probe=declared_pixels,
        max_request_pixels=settings.max_request_pixels,
    )


def build_runtime(settings: Settings) -> Runtime:
    detector, recognizer = load_models(settings)
    manifest = recognizer.manifest
    # Invariant: the manifest validator requires it for recognizers.
    assert manifest.embedding_dim is not None
    database = open_shared_database(settings)
    try:
        gallery = open_configured_gallery(
            settings, model_id=manifest.model_id, dim=manifest.embedding_dim, database=database
        )
        try:
            guard = open_guard(
                settings.data_dir,
                enabled=settings.auth,
                rate_per_s=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
                store=shared_key_store(database) if database and settings.auth else None,
            )
        except BaseException:
            gallery.close()
            raise
    except BaseException:
        if database is not None:
            database.close()
        raise
    metrics = Metrics()
    metrics.watch_gallery(gallery.stats)
    service = build_service(settings, detector, recognizer, gallery, metrics)
    admission = AdmissionGate(
        settings.inference_workers + settings.inference_queue,
        per_tenant=settings.resolved_inference_slots_per_key(),
    )
    turns = FairTurns(settings.inference_workers)
    metrics.watch_admission(lambda: admission.in_use, lambda: turns.waiting)
    return Runtime(
        service=service,
        detector=detector,
        recognizer=recognizer,
        settings=settings,
        inference_limiter=anyio.CapacityLimiter(settings.inference_workers),
        guard=guard,
        metrics=metrics,
        admission=admission,
        turns=turns,
        database=database,
    )


def open_shared_database(settings: Settings) -> Database | None:
    """PostgreSQL for gallery and keys when FACEREC_DATABASE_URL is set, else None."""
    if settings.database_url is None:
        return None
    from app.storage.postgres import DatabaseOptions, open_database

    return open_database(
        settings.database_url.get_secret_value(),
        DatabaseOptions(
            pool_size=settings.database_pool_size,
            timeout_s=settings.database_timeout_s,
            statement_timeout_s=settings.database_statement_timeout_s,
            startup_timeout_s=settings.database_startup_timeout_s,
        ),
    )


def shared_key_store(database: Database) -> KeyStore:
    from app.auth.pgstore import PostgresKeyStore

    return PostgresKeyStore(database)


def build_stream_hub(runtime: Runtime) -> StreamHub:
    """Live recognition (/stream): shares the runtime's sessions, gallery and threshold."""
    settings = runtime.settings
    unknowns = UnknownStore(
        capacity=settings.stream_unknown_capacity,
        crops_per_face=settings.stream_unknown_crops,
        ttl_s=settings.stream_unknown_ttl_s,
    )
    engine = StreamEngine(
        decode=partial(
            decode_image,
            max_bytes=settings.stream_max_frame_bytes,
            max_pixels=settings.stream_max_frame_pixels,
        ),
        detect=scaled_detector(build_detector(runtime.detector), settings.stream_detect_size),
        embed=runtime.service.pipeline.embed,
        gallery=runtime.service.gallery,
        threshold=runtime.service.threshold,
        policy=ReidPolicy(
            interval=settings.stream_reid_interval,
            max_per_frame=settings.stream_max_recognitions_per_frame,
        ),
        votes=VoteRule(
            window=settings.stream_vote_window,
            min_votes=settings.stream_min_votes,
            instant_similarity=None
            if settings.stream_instant_margin is None
            else runtime.service.threshold + settings.stream_instant_margin,
        ),
        tracking=TrackRule(max_missed=settings.stream_max_missed_frames),
        unknowns=unknowns,
        split_similarity=settings.stream_split_similarity,
    )
    return StreamHub(
        engine=engine,
        slots=StreamSlots(settings.stream_max_concurrent, settings.stream_max_per_key),
        max_frame_bytes=settings.stream_max_frame_bytes,
        timeouts=StreamTimeouts(
            idle_s=settings.stream_idle_timeout_s,
            key_check_s=settings.stream_key_check_s,
            send_s=settings.stream_send_timeout_s,
        ),
        unknowns=unknowns,
        metrics=StreamMetrics(runtime.metrics.registry, settings.stream_max_cameras),
    )


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The ASGI app. Nothing heavy happens before the lifespan starts.

    ``runtime`` lets a caller that already built one (the CLI, to fail fast with
    a clear message) hand it over; otherwise the lifespan builds it.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is None:
            resolved = settings or Settings()
            configure_logging(resolved.log_level, resolved.log_format)
            app.state.runtime = await anyio.to_thread.run_sync(build_runtime, resolved)
        else:
            app.state.runtime = runtime
        current: Runtime = app.state.runtime
        app.state.streams = build_stream_hub(current)
        logger.info(
            "ready: detector=%s recognizer=%s threshold=%.3f gallery=%d faces",
            current.detector.manifest.model_id,
            current.recognizer.manifest.model_id,
            current.service.threshold,
            current.service.gallery.total_faces(),
        )
        try:
            yield
        finally:
            current.close()

    app = FastAPI(
        title="facerec",
        version=__version__,
        docs_url=None,  # served offline by install_docs
        redoc_url=None,
        description=(
            "Face detection (SCRFD), alignment and ArcFace recognition with a durable "
            "FAISS gallery. Images are multipart uploads or base64 in JSON (JPEG, PNG, WebP, "
            "BMP). Send the API key in X-API-Key (Authorize, above)."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_docs(app)
    install_openapi(app)

    # The middleware is built before the lifespan runs: it reads the runtime per request.
    def admission() -> AdmissionGate | None:
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        return runtime.admission if runtime else None

    def max_request_bytes() -> int | None:
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        return runtime.settings.max_request_bytes if runtime else None

    def metrics() -> Metrics | None:
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        return runtime.metrics if runtime else None

    def guard() -> Guard | None:
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        return runtime.guard if runtime else None

    def body_timeout_s() -> float | None:
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        return runtime.settings.body_timeout_s if runtime else None

    # Added innermost first. Outermost: request context (ids, access log), then the key
    # check from the headers, body size, body time, and inference admission last.
    app.add_middleware(
        AdmissionMiddleware, gate=admission, paths=recognition_routes.INFERENCE_PATHS
    )
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=body_timeout_s)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_bytes)
    app.add_middleware(AccessMiddleware, guard=guard, header=API_KEY_HEADER)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.include_router(recognition_routes.router)
    app.include_router(gallery_routes.router)
    app.include_router(gallery_routes.collections_router)
    app.include_router(health_routes.router)
    app.include_router(key_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(stream_routes.router)
    app.include_router(page_routes.router)
    app.mount("/static", StaticFiles(directory=stream_routes.STATIC_DIR), name="static")
    return app
