"""Per-request context: request id (X-Request-ID in and out), latency metrics, access log.

Pure ASGI (no BaseHTTPMiddleware), so streaming bodies pass untouched and the
request id context variable is visible to everything the request runs.
Handlers put the stable error code of an error response in
``scope["state"]["error_code"]``; this middleware counts it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.logging import request_id_var
from app.observability.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is echoed only when it is short and plain: it ends up in logs.
_ACCEPTED_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED_ROUTE = "<unmatched>"
# Scope-state key under which a WebSocket route leaves extra fields for its access line.
ACCESS_DETAILS_STATE = "access_details"

access_logger = logging.getLogger("app.access")


def request_id_for(scope: Scope) -> str:
    incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
    return incoming if _ACCEPTED_REQUEST_ID.match(incoming) else uuid.uuid4().hex


def route_template(scope: Scope, status: int) -> str:
    """``/subjects/{subject}`` for API routes, so labels stay bounded and names out of logs.

    Framework routes (``/docs``, ``/openapi.json``, static files) have no template
    and are named by their path; paths that matched nothing are one label.
    """
    template = getattr(scope.get("route"), "path", None)
    if isinstance(template, str):
        return template
    return UNMATCHED_ROUTE if status in (404, 405) else str(scope["path"])


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        try:
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._http(scope, receive, send, request_id)
        finally:
            request_id_var.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        metrics = self.metrics()
        if metrics is not None:
            metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            scope["state"].setdefault("error_code", "internal_error")
            raise
        finally:
            self._record(scope, metrics, status, time.perf_counter() - started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One access line when the socket ends: route, close code, how long, whose key.

        Never the URL: its query string may carry a key. The close code is the server's
        (1000 when the client left first); 403 when the handshake was refused.
        """
        accepted = False
        code: int | None = None
        started = time.perf_counter()

        async def watching_send(message: Message) -> None:
            nonlocal accepted, code
            if message["type"] == "websocket.accept":
                accepted = True
            elif message["type"] == "websocket.close" and code is None:
                code = int(message.get("code", 1000)) if accepted else 403
            elif message["type"] == "websocket.http.response.start" and code is None:
                code = int(message["status"])
            await send(message)

        async def watching_receive() -> Message:
            nonlocal code
            message = await receive()
            if message["type"] == "websocket.disconnect" and code is None:
                code = int(message.get("code", 1000))
            return message

        try:
            await self.app(scope, watching_receive, watching_send)
        except Exception:
            code = 1011
            raise
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope, 0)
            final = 1000 if code is None else code
            details: dict[str, object] = {"key_id": scope.get("state", {}).get("key_id")}
            details.update(scope.get("state", {}).get(ACCESS_DETAILS_STATE, {}))
            access_logger.info(
                "WS %s %s %d %.1f ms%s",
                route,
                "closed" if accepted else "refused",
                final,
                seconds * 1000,
                "".join(f" {name}={value}" for name, value in details.items() if value),
                extra={
                    "method": "WS",
                    "route": route,
                    "status": final,
                    "duration_ms": round(seconds * 1000, 2),
                    **details,
                },
            )

    @staticmethod
    def _record(scope: Scope, metrics: Metrics | None, status: int, seconds: float) -> None:
        method, route = scope["method"], route_template(scope, status)
        state = scope["state"]
        code = state.get("error_code") if status >= 400 else None
        if metrics is not None:
            metrics.in_flight.dec()
            metrics.request_seconds.labels(method, route).observe(seconds)
            metrics.requests.labels(method, route, str(status)).inc()
            if code:
                metrics.error(str(code))
        access_logger.info(
            "%s %s %d %.1f ms",
            method,
            route,
            status,
            seconds * 1000,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "key_id": state.get("key_id"),
                "code": code,
            },
        )
