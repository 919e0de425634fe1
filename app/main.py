"""Composition root: build the service from Settings in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import anyio
import faiss
from fastapi import FastAPI

from app.api import gallery as gallery_routes
from app.api import health as health_routes
from app.api import recognition as recognition_routes
from app.api.handlers import install_error_handlers
from app.config import Settings
from app.core.pipeline import FacePipeline
from app.core.service import FaceService, QualityGate
from app.gallery.store import Gallery
from app.inference.align import align_face
from app.inference.image import decode_image
from app.inference.loader import LoadedModel, build_detector, build_embedder, load_model
from app.inference.session import RuntimeOptions

logger = logging.getLogger("app")


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything the routes need, built once per process in the lifespan."""

    service: FaceService
    detector: LoadedModel
    recognizer: LoadedModel
    settings: Settings
    inference_limiter: anyio.CapacityLimiter


def build_runtime(settings: Settings) -> Runtime:
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
    manifest = recognizer.manifest
    # Invariants: the manifest validator requires both for recognizers.
    assert manifest.embedding_dim is not None
    assert manifest.thresholds is not None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    gallery = Gallery(settings.data_dir, model_id=manifest.model_id, dim=manifest.embedding_dim)
    pipeline = FacePipeline(build_detector(detector), build_embedder(recognizer), align_face)
    threshold = (
        settings.match_threshold
        if settings.match_threshold is not None
        else manifest.thresholds.match
    )
    service = FaceService(
        pipeline,
        gallery,
        partial(
            decode_image,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
        ),
        threshold=threshold,
        gate=QualityGate(
            min_face_size=settings.min_face_size, min_det_score=settings.min_det_score
        ),
        store_aligned_crops=settings.store_aligned_crops,
    )
    return Runtime(
        service=service,
        detector=detector,
        recognizer=recognizer,
        settings=settings,
        inference_limiter=anyio.CapacityLimiter(settings.inference_workers),
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
            logging.basicConfig(level=resolved.log_level.upper())
            app.state.runtime = await anyio.to_thread.run_sync(build_runtime, resolved)
        else:
            app.state.runtime = runtime
        current: Runtime = app.state.runtime
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
            current.service.gallery.close()

    app = FastAPI(
        title="facerec",
        version="0.1.0",
        description=(
            "Face detection (SCRFD), alignment and ArcFace recognition with a durable "
            "FAISS gallery. Images are multipart uploads (JPEG, PNG, WebP, BMP)."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(recognition_routes.router)
    app.include_router(gallery_routes.router)
    app.include_router(health_routes.router)
    return app
