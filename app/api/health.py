"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import RuntimeDep
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
    )


@router.get("/ready", response_model=ReadyResponse, summary="Models loaded and gallery open")
async def ready(runtime: RuntimeDep) -> ReadyResponse:
    collections = runtime.service.gallery.stats()
    return ReadyResponse(
        status="ready",
        detector=_readiness(runtime.detector),
        recognizer=_readiness(runtime.recognizer),
        threshold=runtime.service.threshold,
        gallery_faces=sum(collections.values()),
        collections=collections,
    )
