"""Live recognition over a WebSocket, and the browser page that uses it.

Protocol of ``/stream?collection=NAME``: the client sends frames as binary messages
(JPEG; PNG, WebP and BMP decode too); frames are numbered 0, 1, 2... in the order
sent. The server answers each frame it processes with one JSON text message
(``FrameAnswer``) right after detection and tracking; recognition of the face due
runs in the background (one at a time per stream) and its result shows from the
next answer on. When frames arrive faster than they are processed, a frame
still waiting when a newer one arrives is dropped (latest frame wins) and listed
in the next answer's ``dropped``. Close codes:

- 1003 unsupported data: a text message, or a frame that is not a decodable image;
- 1008 policy violation: an invalid ``collection`` query parameter;
- 1009 message too big: a frame over ``FACEREC_STREAM_MAX_FRAME_BYTES`` bytes or
  ``FACEREC_STREAM_MAX_FRAME_PIXELS`` pixels;
- 1011 internal error: a bug on the server (logged; other streams carry on);
- 1013 try again later: ``FACEREC_STREAM_MAX_CONCURRENT`` streams are already open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketState

from app.api.deps import CollectionParam, run_inference
from app.auth.dependencies import authorize_websocket
from app.errors import FaceRecError, ImageTooLarge, InvalidImage, UnsupportedImageType
from app.stream.background import BackgroundRecognition
from app.stream.hub import StreamHub
from app.stream.mailbox import Delivery, Frame, LatestFrameMailbox
from app.stream.session import FrameResult, RecognitionJob, RecognitionOutcome, StreamSession

if TYPE_CHECKING:
    from app.main import Runtime

logger = logging.getLogger(__name__)
router = APIRouter(tags=["live"])
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# RFC 6455 caps a close reason at 123 bytes of UTF-8.
_MAX_REASON_BYTES = 123


class StreamFaceOut(BaseModel):
    track_id: int = Field(description="stable while the face stays in view")
    bbox: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in frame pixels")
    subject: str | None = Field(description="decided over several frames; null: unknown or not yet")
    similarity: float | None = Field(description="mean similarity behind the decision")
    det_score: float


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


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The live recognition page (webcam, boxes and names, enrollment)."""
    return FileResponse(STATIC_DIR / "index.html")


@router.websocket("/stream")
async def stream(websocket: WebSocket, collection: CollectionParam = "default") -> None:
    runtime: Runtime = websocket.app.state.runtime
    hub: StreamHub = websocket.app.state.streams
    await websocket.accept()
    # Accepted first, so that browsers see the close code and reason, not a failed handshake.
    try:
        authorize_websocket(websocket, collection)
    except FaceRecError as error:
        await _close(websocket, status.WS_1008_POLICY_VIOLATION, error.code)
        return
    if not hub.slots.try_acquire():
        await _close(
            websocket,
            status.WS_1013_TRY_AGAIN_LATER,
            f"{hub.slots.capacity} streams are open; try again later",
        )
        return
    try:
        session = hub.engine.open_session(collection)
        refusal = await _serve(websocket, session, runtime, hub.max_frame_bytes)
    finally:
        hub.slots.release()
    if refusal is not None:
        await _close(websocket, refusal.code, refusal.reason)


async def _serve(
    websocket: WebSocket, session: StreamSession, runtime: Runtime, max_frame_bytes: int
) -> _Refusal | None:
    """Read frames, answer them and recognise faces concurrently until the client leaves or
    a frame is refused; leaving cancels all three and waits for their inference threads."""
    mailbox = LatestFrameMailbox()
    background = BackgroundRecognition()
    outcome: list[_Refusal] = []
    async with anyio.create_task_group() as tasks:

        async def guarded(work: Callable[[], Awaitable[None]]) -> None:
            try:
                await work()
            except _Refusal as refusal:
                outcome.append(refusal)
            except WebSocketDisconnect:
                pass
            except Exception:
                logger.exception("stream of collection %r failed", session.collection)
                outcome.append(_Refusal(status.WS_1011_INTERNAL_ERROR, "internal error"))
            tasks.cancel_scope.cancel()

        tasks.start_soon(guarded, lambda: _receive(websocket, mailbox, max_frame_bytes))
        tasks.start_soon(guarded, lambda: _answer(websocket, mailbox, session, runtime, background))
        tasks.start_soon(guarded, lambda: background.serve(partial(_recognise, session, runtime)))
    return outcome[0] if outcome else None


async def _receive(websocket: WebSocket, mailbox: LatestFrameMailbox, max_bytes: int) -> None:
    index = 0
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            raise _Refusal(
                status.WS_1003_UNSUPPORTED_DATA, "send frames as binary messages (JPEG images)"
            )
        if len(data) > max_bytes:
            raise _Refusal(
                status.WS_1009_MESSAGE_TOO_BIG,
                f"frame {index} is {len(data)} bytes; at most {max_bytes} are accepted",
            )
        mailbox.put(Frame(index=index, data=data, received_at=time.perf_counter()))
        index += 1


async def _answer(
    websocket: WebSocket,
    mailbox: LatestFrameMailbox,
    session: StreamSession,
    runtime: Runtime,
    background: BackgroundRecognition,
) -> None:
    while (delivery := await mailbox.take()) is not None:
        frame = delivery.frame
        process = partial(
            session.process,
            frame.data,
            frame.index,
            background.collect(),
            may_recognise=background.idle,
        )
        try:
            result = await run_inference(runtime, process)
        except (InvalidImage, UnsupportedImageType) as error:
            raise _Refusal(
                status.WS_1003_UNSUPPORTED_DATA, f"frame {frame.index}: {error.message}"
            ) from error
        except ImageTooLarge as error:
            raise _Refusal(
                status.WS_1009_MESSAGE_TOO_BIG, f"frame {frame.index}: {error.message}"
            ) from error
        if result.job is not None:
            background.submit(result.job)
        await websocket.send_text(_answer_message(delivery, result).model_dump_json())


async def _recognise(
    session: StreamSession, runtime: Runtime, job: RecognitionJob
) -> RecognitionOutcome:
    return await run_inference(runtime, partial(session.recognise, job))


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
                det_score=face.det_score,
            )
            for face in result.faces
        ],
        recognised=result.recognised,
        dropped=delivery.dropped,
        dropped_count=delivery.dropped_count,
        latency_ms=(time.perf_counter() - delivery.frame.received_at) * 1000.0,
    )


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    encoded = reason.encode("utf-8")[:_MAX_REASON_BYTES]
    try:
        await websocket.close(code=code, reason=encoded.decode("utf-8", errors="ignore"))
    except (WebSocketDisconnect, RuntimeError, OSError):
        logger.debug("client left before the close frame (code %d)", code)
