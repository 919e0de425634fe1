"""Prometheus exposition. Open like /health: restrict it at the proxy if needed."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response

from app.api.deps import RuntimeDep
from app.observability.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    # Rendering reads the gallery's per-collection counts (a lock): off the event loop.
    body = await anyio.to_thread.run_sync(runtime.metrics.render)
    return Response(body, media_type=METRICS_CONTENT_TYPE)
