"""Composition root: build the service from Settings in the lifespan."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
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
from app.api import models as model_routes
from app.api import openset as openset_routes
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
from app.config import Settings, available_cores
from app.core.generations import Generation
from app.core.lookalikes import LookalikeReports
from app.core.pipeline import FacePipeline
from app.core.service import FaceService, QualityGate
from app.core.thresholds import CollectionSettingsStore, OpenSetConfig, ThresholdPolicy
from app.errors import ModelChecksumMismatch, ModelSwapRejected
from app.gallery import Gallery, open_gallery
from app.gallery.embedded import EmbeddedGallery
from app.gallery.embedded.generations import EmbeddedGenerations
from app.inference.align import align_face
from app.inference.batcher import BatchingEmbedder
from app.inference.catalog import resolve_manifest
from app.inference.engines.base import PrecisionChoice
from app.inference.engines.factory import resolve_engine
from app.inference.image import declared_pixels, decode_image
from app.inference.loader import LoadedModel, build_detector, build_embedder, load_model
from app.inference.manifest import DetectorInput, file_sha256, impostor_tail_of
from app.inference.session import RuntimeOptions
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics, timed
from app.observability.middleware import RequestContextMiddleware
from app.storage.sqlite import utc_now
from app.stream.hub import StreamHub, StreamSlots, StreamTimeouts, scaled_detector
from app.stream.metrics import StreamMetrics
from app.stream.reid import ReidPolicy
from app.stream.session import StreamEngine, TrackRule, VoteRule
from app.stream.unknowns import UnknownStore
from app.swap import (
    ClaimJob,
    ModelSwitcher,
    PointerWatch,
    Serving,
    SwapGallery,
    SyncPacing,
    no_other_claimants,
)

if TYPE_CHECKING:
    from app.gallery.postgres.generations import PostgresGenerations
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
    batcher: BatchingEmbedder | None = None
    # The gallery generation serving and the model swap jobs (both backends).
    generation: Generation | None = None
    switcher: ModelSwitcher | None = None

    def close(self) -> None:
        if self.switcher is not None:
            self.switcher.close()  # every generation it holds, the serving one included
        else:
            self.service.close_background()
            if self.batcher is not None:
                self.batcher.close()
            self.service.gallery.close()
        if self.guard.store is not None:
            self.guard.store.close()
        if self.database is not None:
            self.database.close()


def engine_options(settings: Settings) -> tuple[RuntimeOptions, RuntimeOptions]:
    """(detector, recognizer) session options; docs/performance.md has the measurements.

    The detector runs in the request workers, one call per worker at once, each
    with its share of the cores. The recognizer runs in the batcher's runners
    (``FACEREC_RECOGNIZER_RUNNERS``, default 1), one call per runner at once, each
    with its share of the cores: one runner gives a lone face every core (the
    single-request latency); more raise a CPU's throughput under load.
    """
    engine = resolve_engine(settings.engine, tuple(settings.providers))
    workers = settings.resolved_inference_workers()
    common = RuntimeOptions(
        engine=engine,
        providers=tuple(settings.providers),
        devices=tuple(settings.openvino_devices),
        precision=settings.openvino_precision,
    )
    detector = replace(
        common,
        intra_op_threads=settings.resolved_intra_op_threads(),
        streams=workers,
        precision=detector_precision(settings),
    )
    runners = settings.recognizer_runners
    recognizer = replace(
        common,
        intra_op_threads=settings.intra_op_threads or max(1, available_cores() // runners),
        streams=runners,
    )
    return detector, recognizer


def detector_precision(settings: Settings) -> PrecisionChoice:
    """``auto`` keeps the detector in f32 on the CPU; only the recognizer gets bf16.

    In bf16 the detector's landmarks move (median 0.3 px, up to 4 px on large photos),
    and a one-pass recognizer feels it: the distilled student fell from 99.43% to 99.33%
    on LFW with a bf16 detector, and stayed at 99.45% with only its recognizer in bf16
    (docs/performance.md "Precision"). ``bf16`` asks for both; other devices keep ``auto``.
    """
    choice = settings.openvino_precision
    if choice == "auto" and tuple(settings.openvino_devices) == ("CPU",):
        return "f32"
    return choice


def detector_side(detector: LoadedModel) -> int:
    """The longest side the detector ever looks at: large JPEGs are decoded down to it."""
    spec = detector.manifest.input
    assert isinstance(spec, DetectorInput)  # load_model checked the kind
    return spec.max_side if spec.size_policy == "adaptive" else max(spec.size)


def load_models(settings: Settings) -> tuple[LoadedModel, LoadedModel]:
    """The configured detector and recognizer, sessions sized from the settings."""
    threads = settings.resolved_intra_op_threads()
    detector_options, recognizer_options = engine_options(settings)
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
        for ref, kind, options in (
            (settings.detector, "detector", detector_options),
            (settings.recognizer, "recognizer", recognizer_options),
        )
    )
    return detector, recognizer


def open_configured_gallery(
    settings: Settings, *, model_id: str, dim: int, database: Database | None
) -> Gallery:
    """The gallery the settings point at, for embeddings of ``model_id`` (server and CLI):
    its active generation.

    ``database`` is the shared PostgreSQL (``open_shared_database``) or None for the
    embedded gallery under ``data_dir``; the caller owns and closes it."""
    if database is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    generations = EmbeddedGenerations(settings.data_dir)
    active = generation_store(settings, database).active_number()
    return open_gallery(
        data_dir=generations.gallery_dir(active),
        model_id=model_id,
        dim=dim,
        database=database,
        ef_search=settings.database_ef_search,
        generation=active,
    )


def build_service(
    settings: Settings,
    detector: LoadedModel,
    recognizer: LoadedModel,
    gallery: Gallery,
    metrics: Metrics,
    batcher: BatchingEmbedder,
    *,
    cpu_stages: AbstractContextManager[object] | None = None,
) -> FaceService:
    """Enroll / identify / verify on the loaded models and the gallery (server and CLI).

    ``batcher`` (``start_batcher``) embeds every face; the caller closes it.
    ``cpu_stages``: the CPU slots to share (another generation's), else new ones."""
    manifest = recognizer.manifest
    assert manifest.thresholds is not None  # the manifest validator requires it
    face_detector = build_detector(detector)
    pipeline = FacePipeline(
        face_detector,
        batcher,
        align_face,
        max_faces=settings.max_faces_per_image,
        observer=metrics,
        refiner=face_detector.refine_landmarks if manifest.augment.landmarks == "mirror" else None,
    )
    threshold = (
        settings.match_threshold
        if settings.match_threshold is not None
        else manifest.thresholds.match
    )
    tail = impostor_tail_of(manifest)
    if tail is None:
        logger.warning(
            "recognizer %s has no impostor_tail measured on its embedding space: identify "
            "uses the fixed threshold %.4f at every gallery size (bench/impostor_tail.py "
            "measures one)",
            manifest.model_id,
            threshold,
        )
    stages = cpu_stages or threading.BoundedSemaphore(settings.resolved_inference_workers())
    thresholds = ThresholdPolicy(
        OpenSetConfig(
            tail=tail,
            match_threshold=threshold,
            default_target_fpir=settings.target_fpir,
            fixed=settings.match_threshold is not None,
        ),
        gallery,
        gallery if isinstance(gallery, CollectionSettingsStore) else None,
    )
    full_decode = partial(
        decode_image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )
    return FaceService(
        pipeline,
        gallery,
        timed(metrics, "decode", partial(full_decode, reduce_to=detector_side(detector))),
        full_decoder=timed(metrics, "decode", full_decode),
        threshold=threshold,
        gate=QualityGate(
            min_face_size=settings.min_face_size,
            min_det_score=settings.min_det_score,
            min_quality=settings.min_quality,
        ),
        store_aligned_crops=settings.store_aligned_crops,
        probe=declared_pixels,
        max_request_pixels=settings.max_request_pixels,
        cpu_stages=stages,
        thresholds=thresholds,
        lookalikes=LookalikeReports(
            gallery,
            max_faces=settings.lookalike_max_faces,
            keep=settings.lookalike_keep,
            refresh_s=settings.lookalike_refresh_s,
            slot=stages,
        ),
    )


def start_batcher(
    settings: Settings, recognizer: LoadedModel, metrics: Metrics
) -> BatchingEmbedder:
    """The recognizer behind the batching runners shared by every request and stream."""
    embedder = build_embedder(recognizer)
    return BatchingEmbedder(
        embedder,
        max_batch=settings.batch_max_size or embedder.max_batch,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        observe=metrics.recognizer_batch,
        runners=settings.recognizer_runners,
    )


def build_runtime(settings: Settings) -> Runtime:
    database = open_shared_database(settings)
    try:
        store = generation_store(settings, database)
        if isinstance(store, EmbeddedGenerations):
            store.reconcile()
            store.discard_unfinished()
        else:
            store.discard_abandoned()
        settings, generation = serving_settings(settings, store)
        detector, recognizer = load_models(settings)
        manifest = recognizer.manifest
        # Invariant: the manifest validator requires it for recognizers.
        assert manifest.embedding_dim is not None
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
    batcher = start_batcher(settings, recognizer, metrics)
    service = build_service(settings, detector, recognizer, gallery, metrics, batcher)
    switcher = None
    swappable = swap_gallery(gallery)
    if swappable is not None:
        generation = generation or origin_generation(settings, recognizer, store)
        switcher = ModelSwitcher(
            store,
            Serving(generation, recognizer, swappable, batcher, service),
            open_serving=partial(open_serving, settings, detector, metrics, database),
            models_dir=settings.models_dir,
            store_aligned_crops=settings.store_aligned_crops,
            pacing=SyncPacing(settings.swap_batch_size, settings.swap_pause_ms / 1000),
            claim=switcher_claim(store),
        )
        if database is not None:
            follow_other_replicas(database, switcher)
        metrics.watch_gallery(partial(_active_gallery_stats, switcher))
        metrics.watch_swap(
            partial(_swap_figures, switcher), lambda: switcher.active.generation.number
        )
    else:
        metrics.watch_gallery(gallery.stats)
    # Requests inside the service at once: one per CPU-stage slot, and as many
    # again waiting for the recognizer with their slots given back.
    inside = 2 * settings.resolved_inference_workers()
    admission = AdmissionGate(
        settings.resolved_inference_workers() + settings.inference_queue,
        per_tenant=settings.resolved_inference_slots_per_key(),
    )
    turns = FairTurns(inside)
    metrics.watch_admission(lambda: admission.in_use, lambda: turns.waiting)
    return Runtime(
        service=service,
        detector=detector,
        recognizer=recognizer,
        settings=settings,
        inference_limiter=anyio.CapacityLimiter(inside),
        guard=guard,
        metrics=metrics,
        admission=admission,
        turns=turns,
        database=database,
        batcher=batcher,
        generation=generation,
        switcher=switcher,
    )


# --- gallery generations (model swap, both backends; app.swap) -----------------------


def generation_store(
    settings: Settings, database: Database | None
) -> EmbeddedGenerations | PostgresGenerations:
    """The generations of the configured gallery: folders, or rows in the database."""
    if database is None:
        return EmbeddedGenerations(settings.data_dir)
    from app.gallery.postgres.generations import PostgresGenerations

    return PostgresGenerations(database)


def swap_gallery(gallery: Gallery) -> SwapGallery | None:
    if isinstance(gallery, EmbeddedGallery):
        return gallery
    from app.gallery.postgres import PostgresGallery

    return gallery if isinstance(gallery, PostgresGallery) else None


def switcher_claim(store: EmbeddedGenerations | PostgresGenerations) -> ClaimJob:
    """One job at a time across the replicas of a PostgreSQL gallery (one process
    owns an embedded gallery: nothing to claim)."""
    if isinstance(store, EmbeddedGenerations):
        return no_other_claimants
    return store.claim_job


def follow_other_replicas(database: Database, switcher: ModelSwitcher) -> None:
    """Switch when another replica activates a generation (NOTIFY, and a slow poll)."""
    from app.gallery.postgres.generations import GENERATION_CHANNEL

    switcher.start_following()
    database.notifications.subscribe(
        GENERATION_CHANNEL, PointerWatch(switcher), timeout_s=database.options.startup_timeout_s
    )


def serving_settings(
    settings: Settings, generations: EmbeddedGenerations | PostgresGenerations
) -> tuple[Settings, Generation | None]:
    """``settings`` with the recognizer of the active gallery generation, and that one.

    After a model swap the active generation's recognizer serves, whatever
    FACEREC_RECOGNIZER says (a warning names both when they differ): its gallery
    holds that model's embeddings only. Its manifest must still be the file that was
    activated (sha256), else start-up stops here."""
    pointer = generations.active()
    if pointer is None:
        return settings, None
    generation = generations.get(pointer.generation)
    path = Path(generation.manifest_path)
    if not path.is_file() or file_sha256(path) != generation.manifest_sha256:
        raise ModelChecksumMismatch(
            f"gallery generation {generation.number} serves {generation.model_id} from "
            f"{path}, which is missing or changed since it was activated; restore that "
            "manifest, or roll back to another generation",
            path=str(path),
        )
    try:
        configured = resolve_manifest(settings.recognizer, settings.catalog_dir)[0].model_id
    except Exception:  # reported by the warning below; the generation's model serves
        configured = settings.recognizer
    if configured != generation.model_id:
        logger.warning(
            "FACEREC_RECOGNIZER=%s is not the recognizer of the active gallery generation "
            "%d: serving %s from %s (activated %s), which the gallery was embedded with. "
            "Switch models with POST /admin/models/activate or `facerec models activate`",
            settings.recognizer,
            generation.number,
            generation.model_id,
            path,
            pointer.activated_at.isoformat(),
        )
    return settings.model_copy(update={"recognizer": str(path)}), generation


def origin_generation(
    settings: Settings,
    recognizer: LoadedModel,
    generations: EmbeddedGenerations | PostgresGenerations,
) -> Generation:
    """Generation 0 (a gallery never swapped), served by the configured recognizer."""
    manifest = recognizer.manifest
    assert manifest.embedding_dim is not None  # the manifest validator requires it
    if generations.has(0) and generations.get(0).model_id == manifest.model_id:
        return generations.get(0)
    _, path = resolve_manifest(settings.recognizer, settings.catalog_dir)
    return Generation(
        number=0,
        model_id=manifest.model_id,
        dim=manifest.embedding_dim,
        manifest_path=str(path.resolve()),
        manifest_sha256=file_sha256(path),
        created_at=utc_now(),
        created_by=None,
    )


def open_generation_gallery(
    settings: Settings, database: Database | None, generation: Generation
) -> SwapGallery:
    if database is None:
        return EmbeddedGallery(
            EmbeddedGenerations(settings.data_dir).gallery_dir(generation.number),
            model_id=generation.model_id,
            dim=generation.dim,
        )
    from app.gallery.postgres import PostgresGallery

    return PostgresGallery(
        database,
        model_id=generation.model_id,
        dim=generation.dim,
        ef_search=settings.database_ef_search,
        generation=generation.number,
    )


def open_serving(
    settings: Settings,
    detector: LoadedModel,
    metrics: Metrics,
    database: Database | None,
    generation: Generation,
    active: Serving,
) -> Serving:
    """A generation's recognizer, gallery, batcher and use cases (a swap's target)."""
    _, recognizer_options = engine_options(settings)
    recognizer = load_model(
        generation.manifest_path,
        "recognizer",
        models_dir=settings.models_dir,
        catalog_dir=settings.catalog_dir,
        options=recognizer_options,
    )
    if recognizer.manifest.model_id != generation.model_id:
        raise ModelSwapRejected(
            f"{generation.manifest_path} now describes {recognizer.manifest.model_id}, "
            f"not {generation.model_id}",
            reason="manifest_changed",
        )
    gallery = open_generation_gallery(settings, database, generation)
    try:
        batcher = start_batcher(settings, recognizer, metrics)
    except BaseException:
        gallery.close()
        raise
    service = build_service(
        settings,
        detector,
        recognizer,
        gallery,
        metrics,
        batcher,
        cpu_stages=active.service.cpu_stages,
    )
    return Serving(generation, recognizer, gallery, batcher, service)


def _swap_figures(switcher: ModelSwitcher) -> tuple[int, int, bool]:
    progress = switcher.progress()
    if progress is None:
        return 0, 0, False
    return progress.faces_done, progress.faces_total, progress.running


def _active_gallery_stats(switcher: ModelSwitcher) -> dict[str, int]:
    return switcher.active.gallery.stats()


def publish_serving(app: FastAPI, serving: Serving) -> None:
    """Point the app at a generation that a swap made active: one reference each."""
    runtime: Runtime = app.state.runtime
    switched = replace(
        runtime,
        service=serving.service,
        recognizer=serving.recognizer,
        batcher=serving.batcher,
        generation=serving.generation,
        settings=runtime.settings.model_copy(
            update={"recognizer": serving.generation.manifest_path}
        ),
    )
    # Streams first: a request that read the old runtime and then sees the new hub's
    # unknowns writes into the old, sealed gallery and is refused (model_switched);
    # the other order could write old-model unknowns into the new gallery.
    app.state.streams = build_stream_hub(switched, previous=app.state.streams)
    app.state.runtime = switched


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


def _identification_threshold(service: FaceService, collection: str) -> float:
    """The threshold /identify applies in ``collection`` now: the stream uses the same."""
    return service.identification_threshold(collection, threshold=None, target_fpir=None).threshold


def build_stream_hub(runtime: Runtime, *, previous: StreamHub | None = None) -> StreamHub:
    """Live recognition (/stream): shares the runtime's sessions, gallery and threshold.

    ``previous``: the hub before a model swap; its stream slots and metrics carry on
    (streams already open keep the old engine until they reconnect)."""
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
        # Frames: plain landmarks (same embedding space), names decided by votes.
        embed=partial(runtime.service.pipeline.embed, refine=False),
        gallery=runtime.service.gallery,
        threshold=runtime.service.threshold,
        threshold_for=partial(_identification_threshold, runtime.service),
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
        slots=previous.slots
        if previous
        else StreamSlots(settings.stream_max_concurrent, settings.stream_max_per_key),
        max_frame_bytes=settings.stream_max_frame_bytes,
        timeouts=StreamTimeouts(
            idle_s=settings.stream_idle_timeout_s,
            key_check_s=settings.stream_key_check_s,
            send_s=settings.stream_send_timeout_s,
        ),
        unknowns=unknowns,
        metrics=previous.metrics
        if previous
        else StreamMetrics(runtime.metrics.registry, settings.stream_max_cameras),
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
        if current.switcher is not None:
            current.switcher.attach(partial(publish_serving, app))
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
            latest: Runtime = app.state.runtime  # a model swap may have replaced it
            latest.close()

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
    app.include_router(openset_routes.router)
    app.include_router(health_routes.router)
    app.include_router(key_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(model_routes.router)
    app.include_router(stream_routes.router)
    app.include_router(page_routes.router)
    app.mount("/static", StaticFiles(directory=stream_routes.STATIC_DIR), name="static")
    return app
