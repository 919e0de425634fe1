"""Liveness and readiness."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request

from app.api.deps import RuntimeDep
from app.api.models import generation_brief, swap_brief
from app.auth.dependencies import sees_gallery_detail
from app.inference.loader import LoadedModel
from app.schemas import HealthResponse, ModelReadiness, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    return HealthResponse(status="ok")


def _readiness(model: LoadedModel) -> ModelReadiness:
    return ModelReadiness(
        name=model.manifest.name,
        model_id=model.manifest.model_id,
        sha256=model.manifest.sha256,
        providers=model.providers,
        engine=model.engine,
        precision=model.session.precision,
    )


@router.get(
    "/ready",
    response_model=ReadyResponse,
    response_model_exclude_none=True,
    summary="Models loaded and gallery open",
)
async def ready(runtime: RuntimeDep, request: Request) -> ReadyResponse:
    """Open. Collection names and sizes are tenants' data: they are listed only for an
    admin key (X-API-Key), or when API keys are off."""
    policy = runtime.service.thresholds
    progress = None if runtime.switcher is None else runtime.switcher.progress()
    response = ReadyResponse(
        status="ready",
        detector=_readiness(runtime.detector),
        recognizer=_readiness(runtime.recognizer),
        threshold=runtime.service.threshold,
        target_fpir=policy.config.default_target_fpir if policy else None,
        identify_thresholds=policy.describes if policy else None,
        generation=None if runtime.generation is None else generation_brief(runtime.generation),
        swap=None if progress is None else swap_brief(progress),
    )
    if not sees_gallery_detail(request):
        return response
    collections = await anyio.to_thread.run_sync(runtime.service.gallery.stats)
    return response.model_copy(
        update={"gallery_faces": sum(collections.values()), "collections": collections}
    )
