"""Live recognition over the WebSocket ``/stream`` (protocol: docs/live.md).

The client sends each frame as one binary message (a JPEG) and reads the JSON answer
the server sends for each frame it processes (a frame still waiting when a newer one
arrives is dropped and listed in the next answer). The API key travels in the
``X-API-Key`` header of the handshake. Unknown fields of an answer are kept
(``model_extra``), so the client keeps working as the protocol grows.
"""

from __future__ import annotations

from contextlib import ExitStack
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as connect_async
from websockets.sync.client import ClientConnection, connect


class StreamFace(BaseModel):
    model_config = ConfigDict(extra="allow")

    track_id: int
    bbox: tuple[float, float, float, float]
    subject: str | None
    similarity: float | None
    det_score: float


class StreamAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")

    frame: int
    width: int
    height: int
    faces: list[StreamFace]
    dropped: list[int]
    dropped_count: int
    latency_ms: float


def stream_url(base_url: str, collection: str) -> str:
    scheme, _, rest = base_url.partition("://")
    websocket_scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return f"{websocket_scheme}://{rest}/stream?{urlencode({'collection': collection})}"


class LiveStream:
    """One open stream (blocking). ``with client.stream() as live:`` closes it at the end."""

    def __init__(self, connection: ClientConnection, resources: ExitStack) -> None:
        self._connection = connection
        self._resources = resources

    @classmethod
    def connect(cls, url: str, headers: dict[str, str], *, max_size: int) -> LiveStream:
        resources = ExitStack()
        connection = resources.enter_context(
            connect(url, additional_headers=headers, max_size=max_size)
        )
        return cls(connection, resources)

    def send(self, frame: bytes) -> None:
        self._connection.send(frame)

    def receive(self, timeout: float | None = None) -> StreamAnswer:
        """The next answer; raises websockets' ``ConnectionClosed`` (with the server's
        close code and reason) when the server ended the stream."""
        return StreamAnswer.model_validate_json(self._connection.recv(timeout=timeout))

    def close(self) -> None:
        self._resources.close()

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncLiveStream:
    """One open stream for asyncio: ``async with client.stream() as live:``."""

    def __init__(self, url: str, headers: dict[str, str], *, max_size: int) -> None:
        self._url, self._headers, self._max_size = url, headers, max_size
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncLiveStream:
        self._connection = await connect_async(
            self._url, additional_headers=self._headers, max_size=self._max_size
        )
        return self

    async def send(self, frame: bytes) -> None:
        await self._open().send(frame)

    async def receive(self) -> StreamAnswer:
        return StreamAnswer.model_validate_json(await self._open().recv())

    async def __aexit__(self, *exc: Any) -> None:
        if self._connection is not None:
            await self._connection.close()

    def _open(self) -> AsyncConnection:
        if self._connection is None:
            raise RuntimeError("use the stream as `async with client.stream() as live:`")
        return self._connection
