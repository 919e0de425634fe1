"""Prometheus exposition. Open like /health: per-collection series only for an admin key.

Anyone reaching the port sees process, HTTP, error-code and inference-stage metrics
(route templates and codes, never names); ``facerec_gallery_faces{collection=...}``
is added when the scrape sends an admin ``X-API-Key`` (or API keys are off).
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response

from app.api.deps import RuntimeDep
from app.auth.dependencies import sees_gallery_detail
from app.observability.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep, request: Request) -> Response:
    # Rendering reads the gallery's per-collection counts (a lock): off the event loop.
    body = await anyio.to_thread.run_sync(runtime.metrics.render, sees_gallery_detail(request))
    return Response(body, media_type=METRICS_CONTENT_TYPE)
