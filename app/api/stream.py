"""Live recognition over a WebSocket, and the browser page that uses it.

Protocol of ``/stream?collection=NAME&camera=NAME`` (see docs/live.md): the key
travels in the ``X-API-Key`` header or as the ``facerec.key.<key>`` subprotocol
beside ``facerec.v1`` (``stream_access``), never in the URL. The client sends
frames as binary messages (JPEG; PNG, WebP and BMP decode too), numbered 0, 1,
2... in the order sent. The server answers each frame it processes with one
JSON text message (``FrameAnswer``) right after detection, tracking and the
appearance check; recognition of the face due runs in the background (one at a
time per stream) and its result shows from the next answer on. When frames
arrive faster than they are processed (or than the key's rate budget allows), a
frame still waiting when a newer one arrives is dropped (latest frame wins) and
listed in the next answer's ``dropped``. Close codes, each with a reason that
starts with a stable code:

- 1001 going away: ``idle_timeout``, no frame for ``FACEREC_STREAM_IDLE_TIMEOUT_S``;
- 1003 unsupported data: a text message, or a frame that is not a decodable image;
- 1008 policy violation: ``invalid_request`` (collection or camera name),
  ``unauthorized`` (no key, a bad or revoked key, a key in the URL), ``forbidden``
  (the key may not use the collection, also when its scope changes while
  streaming), ``too_many_streams`` (the key holds ``FACEREC_STREAM_MAX_PER_KEY``),
  ``slow_consumer`` (an answer not taken for ``FACEREC_STREAM_SEND_TIMEOUT_S``);
- 1009 message too big: a frame over ``FACEREC_STREAM_MAX_FRAME_BYTES`` bytes or
  ``FACEREC_STREAM_MAX_FRAME_PIXELS`` pixels;
- 1011 internal error: a bug on the server (logged; other streams carry on);
- 1013 try again later: ``server_busy`` (``FACEREC_STREAM_MAX_CONCURRENT`` streams
  are open) or ``rate_limited`` at the handshake.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketState

from app.api.deps import run_inference
from app.api.limits import tenant_var
from app.api.stream_access import StreamAccess, credentials_of, refusal
from app.errors import (
    FaceRecError,
    Forbidden,
    ImageTooLarge,
    InvalidImage,
    RateLimited,
    Unauthorized,
    UnsupportedImageType,
)
from app.observability.middleware import ACCESS_DETAILS_STATE
from app.stream.background import BackgroundRecognition
from app.stream.hub import SlotRefusal, StreamHub
from app.stream.mailbox import Delivery, Frame, LatestFrameMailbox
from app.stream.session import FrameResult, RecognitionJob, RecognitionOutcome, StreamSession

if TYPE_CHECKING:
    from app.main import Runtime

logger = logging.getLogger(__name__)
router = APIRouter(tags=["live"])
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# RFC 6455 caps a close reason at 123 bytes of UTF-8.
_MAX_REASON_BYTES = 123
# Collections and cameras become label values and log fields: keep them tame.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
WS_1001_GOING_AWAY = 1001


class StreamFaceOut(BaseModel):
    track_id: int = Field(description="stable while the same face stays in view")
    bbox: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in frame pixels")
    subject: str | None = Field(description="decided over several frames; null: unknown or not yet")
    similarity: float | None = Field(description="mean similarity behind the decision")
    unknown_id: str | None = Field(
        description="while the face is decided unknown: stable for this person in this stream "
        "(also when they come back); enroll them with POST /enroll (unknown_id)"
    )
    det_score: float
    quality: float = Field(description="0-1: size, detector score, frontal pose, sharpness")


class FrameAnswer(BaseModel):
    frame: int = Field(description="0-based index of the frame, in the order the client sent")
    width: int
    height: int
    faces: list[StreamFaceOut]
    recognised: list[int] = Field(
        description="tracks whose recognition finished since the previous answer and was "
        "counted in their names for this one"
    )
    dropped: list[int] = Field(description="frames skipped since the previous answer (<= 256)")
    dropped_count: int = Field(description="exact number of frames skipped since then")
    latency_ms: float = Field(description="server time from receiving the frame to this answer")


class _Refusal(Exception):
    """Ends a stream with a WebSocket close code (handled at this edge only)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class _Tally:
    """What the stream's access line reports."""

    key_id: str | None = None
    camera_name: str | None = None  # validated, as the client named it
    camera: str = ""  # its metrics label, given once the key is accepted
    answered: int = 0
    dropped: int = 0


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The live recognition page (webcam, boxes and names, unknown faces, enrollment)."""
    return FileResponse(STATIC_DIR / "index.html")


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    tally = _Tally()
    reason = ""
    try:
        _, reason = await _run(websocket, tally)
    finally:
        _describe_stream(websocket, reason, tally)


async def _run(websocket: WebSocket, tally: _Tally) -> tuple[int, str]:
    runtime: Runtime = websocket.app.state.runtime
    hub: StreamHub = websocket.app.state.streams
    credentials = credentials_of(websocket)
    # Accepted first, so that browsers see the close code and reason, not a failed handshake.
    await websocket.accept(subprotocol=credentials.subprotocol)
    try:
        collection, camera = _names(websocket)
        tally.camera_name = camera
        refused = refusal(websocket)
        if refused is not None:
            raise _Refusal(status.WS_1008_POLICY_VIOLATION, refused)
        access = StreamAccess(runtime.guard, credentials.token, collection)
        key = access.open()
    except _Refusal as refusal_:
        return await _close(websocket, refusal_.code, refusal_.reason)
    except RateLimited as error:
        return await _close(websocket, status.WS_1013_TRY_AGAIN_LATER, _reason(error))
    except FaceRecError as error:
        return await _close(websocket, status.WS_1008_POLICY_VIOLATION, _reason(error))
    tally.key_id = key.key_id if key is not None else None
    # Inference turns of this stream are granted fairly among keys, like HTTP requests'.
    tenant_var.set(tally.key_id)
    # Labelled only now: clients without a valid key cannot use up the camera labels.
    tally.camera = hub.metrics.cameras.label(camera)
    slot = hub.slots.try_acquire(tally.key_id)
    if slot is SlotRefusal.KEY_FULL:
        return await _close(
            websocket,
            status.WS_1008_POLICY_VIOLATION,
            f"too_many_streams: this key may have {hub.slots.per_key} streams open",
        )
    if slot is SlotRefusal.FULL:
        return await _close(
            websocket,
            status.WS_1013_TRY_AGAIN_LATER,
            f"server_busy: {hub.slots.capacity} streams are open; try again later",
        )
    hub.metrics.stream_opened(tally.camera)
    try:
        session = hub.engine.open_session(collection, tally.key_id)
        outcome = await _serve(websocket, session, runtime, hub, access, tally)
    finally:
        hub.metrics.stream_closed(tally.camera)
        hub.slots.release(tally.key_id)
    if outcome is None:
        return status.WS_1000_NORMAL_CLOSURE, ""
    return await _close(websocket, outcome.code, outcome.reason)


def _names(websocket: WebSocket) -> tuple[str, str | None]:
    """The validated ``collection`` and ``camera`` query parameters."""
    collection = websocket.query_params.get("collection", "default")
    camera = websocket.query_params.get("camera") or None
    for field, value in (("collection", collection), ("camera", camera)):
        if value is not None and not _NAME.match(value):
            raise _Refusal(
                status.WS_1008_POLICY_VIOLATION,
                f"invalid_request: {field} must be 1-64 letters, digits, _ . - "
                "(starting with a letter or digit)",
            )
    return collection, camera


def _reason(error: FaceRecError) -> str:
    return f"{error.code}: {error.message}"


async def _serve(
    websocket: WebSocket,
    session: StreamSession,
    runtime: Runtime,
    hub: StreamHub,
    access: StreamAccess,
    tally: _Tally,
) -> _Refusal | None:
    """Read frames, answer them, recognise faces and watch the key concurrently until the
    client leaves or the stream is refused; leaving cancels all four and waits for their
    inference threads."""
    mailbox = LatestFrameMailbox()
    background = BackgroundRecognition()
    outcome: list[_Refusal] = []
    answering = _Answering(websocket, mailbox, session, runtime, hub, access, background, tally)
    with hub.metrics.watching(background):
        async with anyio.create_task_group() as tasks:

            async def guarded(work: Callable[[], Awaitable[None]]) -> None:
                try:
                    await work()
                except _Refusal as refusal_:
                    outcome.append(refusal_)
                except (Unauthorized, Forbidden) as error:
                    outcome.append(_Refusal(status.WS_1008_POLICY_VIOLATION, _reason(error)))
                except WebSocketDisconnect:
                    pass
                except Exception:
                    logger.exception("stream of collection %r failed", session.collection)
                    outcome.append(_Refusal(status.WS_1011_INTERNAL_ERROR, "internal_error"))
                tasks.cancel_scope.cancel()

            tasks.start_soon(guarded, lambda: _receive(websocket, mailbox, hub))
            tasks.start_soon(guarded, answering.run)
            tasks.start_soon(
                guarded, lambda: background.serve(partial(_recognise, session, runtime, hub, tally))
            )
            tasks.start_soon(guarded, lambda: _watch_key(access, hub.timeouts.key_check_s))
    return outcome[0] if outcome else None


async def _receive(websocket: WebSocket, mailbox: LatestFrameMailbox, hub: StreamHub) -> None:
    index = 0
    max_bytes, idle_s = hub.max_frame_bytes, hub.timeouts.idle_s
    while True:
        with anyio.move_on_after(idle_s) as waiting:
            message = await websocket.receive()
        if waiting.cancelled_caught:
            raise _Refusal(WS_1001_GOING_AWAY, f"idle_timeout: no frame for {idle_s:g} s")
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            raise _Refusal(
                status.WS_1003_UNSUPPORTED_DATA,
                "unsupported_data: send frames as binary messages (JPEG images)",
            )
        if len(data) > max_bytes:
            raise _Refusal(
                status.WS_1009_MESSAGE_TOO_BIG,
                f"image_too_large: frame {index} is {len(data)} bytes; at most {max_bytes}",
            )
        mailbox.put(Frame(index=index, data=data, received_at=time.perf_counter()))
        index += 1
        # A message already buffered is returned without suspending: without this
        # checkpoint a client sending as fast as it can would keep the event loop, and
        # every other stream and request, waiting (tests/stream/test_stream_hostile.py).
        await anyio.lowlevel.checkpoint()


async def _watch_key(access: StreamAccess, every_s: float) -> None:
    """Re-check the key while the stream runs, whether or not frames come."""
    while True:
        await anyio.sleep(every_s)
        await anyio.to_thread.run_sync(access.check)


@dataclass(slots=True)
class _Answering:
    websocket: WebSocket
    mailbox: LatestFrameMailbox
    session: StreamSession
    runtime: Runtime
    hub: StreamHub
    access: StreamAccess
    background: BackgroundRecognition
    tally: _Tally

    async def run(self) -> None:
        while await self.mailbox.ready():
            await self.access.charge_frame()
            delivery = self.mailbox.take_now()
            frame = delivery.frame
            try:
                result = await run_inference(self.runtime, partial(self._process, frame))
            except (InvalidImage, UnsupportedImageType) as error:
                raise _Refusal(
                    status.WS_1003_UNSUPPORTED_DATA, f"{error.code}: frame {frame.index}"
                ) from error
            except ImageTooLarge as error:
                raise _Refusal(
                    status.WS_1009_MESSAGE_TOO_BIG, f"{error.code}: frame {frame.index}"
                ) from error
            if result.job is not None:
                self.background.submit(result.job)
            answer = _answer_message(delivery, result)
            with anyio.move_on_after(self.hub.timeouts.send_s) as sending:
                await self.websocket.send_text(answer.model_dump_json())
            if sending.cancelled_caught:
                raise _Refusal(
                    status.WS_1008_POLICY_VIOLATION,
                    f"slow_consumer: an answer was not taken in {self.hub.timeouts.send_s:g} s",
                )
            self._count(delivery, result, answer.latency_ms)

    def _process(self, frame: Frame) -> FrameResult:
        """In the inference worker, when it is this frame's turn: the recognitions that
        finished while the frame waited are folded into it (idle is read first: a job
        reported finished has its outcome collected)."""
        may_recognise = self.background.idle
        return self.session.process(
            frame.data, frame.index, self.background.collect(), may_recognise=may_recognise
        )

    def _count(self, delivery: Delivery, result: FrameResult, latency_ms: float) -> None:
        self.tally.answered += 1
        self.tally.dropped += delivery.dropped_count
        self.hub.metrics.frame_answered(
            self.tally.camera,
            latency_s=latency_ms / 1000.0,
            dropped=delivery.dropped_count,
            checks=result.checked,
            splits=len(result.split),
        )


async def _recognise(
    session: StreamSession, runtime: Runtime, hub: StreamHub, tally: _Tally, job: RecognitionJob
) -> RecognitionOutcome:
    outcome = await run_inference(runtime, partial(session.recognise, job))
    hub.metrics.recognised(tally.camera, len(job.tracked))
    return outcome


def _answer_message(delivery: Delivery, result: FrameResult) -> FrameAnswer:
    return FrameAnswer(
        frame=delivery.frame.index,
        width=result.width,
        height=result.height,
        faces=[
            StreamFaceOut(
                track_id=face.track_id,
                bbox=face.bbox,
                subject=face.subject,
                similarity=face.similarity,
                unknown_id=face.unknown_id,
                det_score=face.det_score,
                quality=face.quality,
            )
            for face in result.faces
        ],
        recognised=result.recognised,
        dropped=delivery.dropped,
        dropped_count=delivery.dropped_count,
        latency_ms=(time.perf_counter() - delivery.frame.received_at) * 1000.0,
    )


# A close frame that the client does not take in this long is abandoned.
_CLOSE_TIMEOUT_S = 5.0


async def _close(websocket: WebSocket, code: int, reason: str) -> tuple[int, str]:
    encoded = reason.encode("utf-8")[:_MAX_REASON_BYTES]
    reason = encoded.decode("utf-8", errors="ignore")
    if websocket.application_state != WebSocketState.CONNECTED:
        return code, reason
    try:
        with anyio.move_on_after(_CLOSE_TIMEOUT_S):
            await websocket.close(code=code, reason=reason)
    except (WebSocketDisconnect, RuntimeError, OSError):
        logger.debug("client left before the close frame (code %d)", code)
    return code, reason


def _describe_stream(websocket: WebSocket, reason: str, tally: _Tally) -> None:
    """What the access line (``RequestContextMiddleware``) adds for a stream; never the key."""
    websocket.scope.setdefault("state", {})[ACCESS_DETAILS_STATE] = {
        "key_id": tally.key_id,
        "code": reason.split(":", 1)[0] if reason else None,
        "camera": tally.camera_name,
        "frames": tally.answered,
        "dropped": tally.dropped,
    }
