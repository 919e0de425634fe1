"""Edge limits that must act before FastAPI parses a body: request size and admission.

Both are pure ASGI middleware, so a refused request costs no multipart parsing:

* ``BodySizeLimitMiddleware``: 413 ``request_too_large`` when Content-Length
  declares more than the limit (nothing is read), or as soon as a streamed
  (chunked) body passes it; the app then sees a client disconnect.
* ``AdmissionMiddleware``: at most ``inference_workers + inference_queue``
  inference requests in the service at once; the next one gets an immediate
  503 ``server_busy`` with ``Retry-After`` instead of an unbounded wait.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.handlers import error_body

# Seconds a client is asked to wait when every inference slot is taken: about
# the time one queue's worth of photos takes to clear on a CPU.
BUSY_RETRY_AFTER_S = 1


class AdmissionGate:
    """A non-blocking counting semaphore. Event-loop only: no lock needed."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.in_use = 0

    def try_enter(self) -> bool:
        if self.in_use >= self.capacity:
            return False
        self.in_use += 1
        return True

    def leave(self) -> None:
        self.in_use -= 1


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer with the service's error JSON, and note the code for the metrics."""
    scope.setdefault("state", {})["error_code"] = code
    response = JSONResponse(error_body(code, message), status_code=status, headers=headers)
    await response(scope, receive, send)


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int | None]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes() if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {limit} bytes (FACEREC_MAX_REQUEST_BYTES)"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await send_error(
                scope, receive, send, status=413, code="request_too_large", message=message
            )
            return
        received = 0
        app_started = False
        refused = False  # our 413 went out; whatever the app sends after it is dropped

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            chunk = await receive()
            if chunk["type"] == "http.request":
                received += len(chunk.get("body", b""))
                if received > limit:
                    if not app_started:
                        refused = True
                        await send_error(
                            scope,
                            receive,
                            send,
                            status=413,
                            code="request_too_large",
                            message=message,
                        )
                    return {"type": "http.disconnect"}
            return chunk

        async def app_send(message: Message) -> None:
            nonlocal app_started
            if refused:
                return
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        await self.app(scope, counting_receive, app_send)


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        gate: Callable[[], AdmissionGate | None],
        paths: frozenset[str],
    ) -> None:
        self.app = app
        self.gate = gate
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = self.gate() if self._limited(scope) else None
        if gate is None:
            await self.app(scope, receive, send)
            return
        if not gate.try_enter():
            await send_error(
                scope,
                receive,
                send,
                status=503,
                code="server_busy",
                message="every inference worker and queue slot is taken; retry shortly",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.leave()

    def _limited(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path: str = scope["path"]
        root = scope.get("root_path", "")
        return (path.removeprefix(root) if root else path) in self.paths
