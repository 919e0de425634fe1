"""Edge limits that act before FastAPI parses a body, and the fair share of inference.

All are pure ASGI middleware behind the access middleware (``app.api.access``), so
they run only for authenticated callers and a refused request costs no multipart
parsing:

* ``BodySizeLimitMiddleware``: 413 ``request_too_large`` when Content-Length
  declares more than the limit (nothing is read), or as soon as a streamed
  (chunked) body passes it; the app then sees a client disconnect.
* ``BodyTimeoutMiddleware``: 408 ``request_timeout`` when the body has not fully
  arrived within FACEREC_BODY_TIMEOUT_S of the request's start.
* ``AdmissionMiddleware``: at most ``inference_workers + inference_queue``
  inference requests in the service at once, and at most
  FACEREC_INFERENCE_SLOTS_PER_KEY of them from one key; beyond, an immediate 503
  ``server_busy`` (or 429 ``concurrency_limited`` for the key) with ``Retry-After``.
* ``FairTurns``: admitted requests take inference turns round-robin by key
  (``run_inference`` in ``app.api.deps`` takes them), so a key's queued work
  delays another key by at most one turn per worker.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.handlers import error_body

# Seconds a client is asked to wait when every inference slot is taken: about
# the time one queue's worth of photos takes to clear on a CPU.
BUSY_RETRY_AFTER_S = 1


class AdmissionGate:
    """A non-blocking counting semaphore with a per-tenant share. Event-loop only: no lock.

    ``try_enter(tenant)`` admits while fewer than ``capacity`` requests are in and the
    tenant (an API key id) holds fewer than ``per_tenant``. Tenant None (auth off) is
    bounded by ``capacity`` only.
    """

    def __init__(self, capacity: int, per_tenant: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.per_tenant = capacity if per_tenant is None else max(1, min(per_tenant, capacity))
        self.in_use = 0
        self._held: dict[str, int] = {}

    def held_by(self, tenant: str | None) -> int:
        return self.in_use if tenant is None else self._held.get(tenant, 0)

    def try_enter(self, tenant: str | None = None) -> Admission:
        if self.in_use >= self.capacity:
            return Admission.BUSY
        if tenant is not None:
            held = self._held.get(tenant, 0)
            if held >= self.per_tenant:
                return Admission.TENANT_FULL
            self._held[tenant] = held + 1
        self.in_use += 1
        return Admission.ADMITTED

    def leave(self, tenant: str | None = None) -> None:
        self.in_use -= 1
        if tenant is not None:
            held = self._held.pop(tenant) - 1
            if held:
                self._held[tenant] = held


class Admission(enum.Enum):
    ADMITTED = "admitted"
    BUSY = "busy"  # every slot is taken
    TENANT_FULL = "tenant_full"  # this key holds its share


class FairTurns:
    """At most ``capacity`` inference turns at once, granted round-robin across tenants.

    A request runs its inference in turns (one per photo); when every turn is taken,
    waiting turns queue per tenant, and each freed turn goes to the next tenant in
    rotation, so a tenant with many queued turns delays another tenant's turn by at
    most one of its own per worker. Event-loop only: no lock.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.active = 0
        self._waiting: OrderedDict[str | None, deque[anyio.Event]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @asynccontextmanager
    async def turn(self, tenant: str | None) -> AsyncIterator[None]:
        if self.active < self.capacity and not self._waiting:
            self.active += 1
        else:
            granted = anyio.Event()
            self._waiting.setdefault(tenant, deque()).append(granted)
            try:
                await granted.wait()
            except BaseException:
                if granted.is_set():  # handed a turn while being cancelled: pass it on
                    self._hand_over()
                else:
                    self._forget(tenant, granted)
                raise
        try:
            yield
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the turn just freed to the next tenant in rotation, or free it."""
        if not self._waiting:
            self.active -= 1
            return
        tenant, queue = self._waiting.popitem(last=False)
        granted = queue.popleft()
        if queue:
            self._waiting[tenant] = queue  # to the back of the rotation
        granted.set()

    def _forget(self, tenant: str | None, granted: anyio.Event) -> None:
        queue = self._waiting.get(tenant)
        if queue is None:
            return
        queue.remove(granted)
        if not queue:
            del self._waiting[tenant]


# The tenant (API key id) of the request being served, set by the access middleware so
# that ``run_inference`` can take its turn without being handed the key. None: auth is
# off, or a caller outside an HTTP request (the WebSocket sets its own).
tenant_var: ContextVar[str | None] = ContextVar("facerec_tenant", default=None)


def current_tenant() -> str | None:
    return tenant_var.get()


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


# A refusal sent before the body was read: the connection is closed after it, so the
# client's unread upload is not parsed as the next request.
CLOSE = {"Connection": "close"}


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
                scope,
                receive,
                send,
                status=413,
                code="request_too_large",
                message=message,
                headers=CLOSE,
            )
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            chunk = await receive()
            if chunk["type"] == "http.request":
                received += len(chunk.get("body", b""))
                if received > limit:
                    raise _Refusal(413, "request_too_large", message)
            return chunk

        await _refusing(self.app, scope, counting_receive, receive, send)


class BodyTimeoutMiddleware:
    """408 ``request_timeout`` when the whole body has not arrived ``timeout_s`` after the
    request started (slow-loris uploads); the app then sees a client disconnect."""

    def __init__(self, app: ASGIApp, timeout_s: Callable[[], float | None]) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = self.timeout_s() if scope["type"] == "http" else None
        if timeout is None:
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + timeout
        complete = False
        message = f"the request body did not arrive within {timeout:g} s (FACEREC_BODY_TIMEOUT_S)"

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # body done: later receives wait for a disconnect, untimed
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()):
                chunk = await receive()
                if chunk["type"] != "http.request" or not chunk.get("more_body", False):
                    complete = True
                return chunk
            raise _Refusal(408, "request_timeout", message)

        await _refusing(self.app, scope, timed_receive, receive, send)


class _Refusal(Exception):
    """Raised inside a wrapped ``receive`` to refuse the request with an error response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def _refusing(
    app: ASGIApp, scope: Scope, wrapped: Receive, receive: Receive, send: Send
) -> None:
    """Run ``app`` with ``wrapped`` as its receive; a ``_Refusal`` raised there answers
    with the error (when nothing was sent yet) and the app sees a disconnect."""
    app_started = False
    refused = False  # our error went out; whatever the app sends after it is dropped

    async def guarded_receive() -> Message:
        nonlocal refused
        if refused:
            return {"type": "http.disconnect"}
        try:
            return await wrapped()
        except _Refusal as refusal:
            refused = True
            if not app_started:
                await send_error(
                    scope,
                    receive,
                    send,
                    status=refusal.status,
                    code=refusal.code,
                    message=refusal.message,
                    headers=CLOSE,
                )
            return {"type": "http.disconnect"}

    async def app_send(message: Message) -> None:
        nonlocal app_started
        if refused:
            return
        if message["type"] == "http.response.start":
            app_started = True
        await send(message)

    await app(scope, guarded_receive, app_send)


class AdmissionMiddleware:
    """Admits inference requests into the gate after the access middleware identified the
    tenant: 503 ``server_busy`` when every slot is taken, 429 ``concurrency_limited``
    when the tenant's key already holds its share."""

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
        tenant = current_tenant()
        admission = gate.try_enter(tenant)
        if admission is Admission.BUSY:
            await send_error(
                scope,
                receive,
                send,
                status=503,
                code="server_busy",
                message="every inference worker and queue slot is taken; retry shortly",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S), **CLOSE},
            )
            return
        if admission is Admission.TENANT_FULL:
            await send_error(
                scope,
                receive,
                send,
                status=429,
                code="concurrency_limited",
                message=(
                    f"this API key already has {gate.per_tenant} inference requests in "
                    "the service (FACEREC_INFERENCE_SLOTS_PER_KEY); retry when one finishes"
                ),
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S), **CLOSE},
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.leave(tenant)

    def _limited(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path: str = scope["path"]
        root = scope.get("root_path", "")
        return (path.removeprefix(root) if root else path) in self.paths
