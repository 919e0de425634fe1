"""The asyncio client (httpx.AsyncClient): the same methods as ``FaceRecClient``, awaited."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import httpx

from app.client import calls
from app.client.requests import Call, ImageInput, content, headers, parse
from app.client.stream import AsyncLiveStream, stream_url
from app.schemas import (
    CollectionList,
    DeleteFaceResponse,
    DeleteSubjectResponse,
    EmbedResponse,
    EnrollResponse,
    IdentifyResponse,
    ReadyResponse,
    SubjectDetail,
    SubjectPage,
    VerifyResponse,
)

FacePolicy = Literal["single", "largest"]


class AsyncFaceRecClient:
    """The facerec API for asyncio code; see ``FaceRecClient`` for each method."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        collection: str = "default",
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.collection = collection
        self._api_key = headers(api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._api_key, timeout=timeout, transport=transport
        )

    # --- recognition --------------------------------------------------------------------

    async def enroll(
        self,
        subject: str,
        images: Sequence[ImageInput],
        *,
        face_policy: FacePolicy = "single",
        strict: bool = False,
        collection: str | None = None,
    ) -> EnrollResponse:
        """Enroll ``subject`` from photos (paths, bytes or files); see ``rejected`` and
        ``warnings`` in the answer. ``strict`` refuses faces of other subjects (409)."""
        call = calls.enroll(self._in(collection), subject, images, face_policy, strict)
        return parse(await self._send(call), EnrollResponse)

    async def identify(
        self,
        image: ImageInput,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        collection: str | None = None,
    ) -> IdentifyResponse:
        call = calls.identify(self._in(collection), image, top_k, threshold)
        return parse(await self._send(call), IdentifyResponse)

    async def verify(
        self, first: ImageInput, second: ImageInput, *, threshold: float | None = None
    ) -> VerifyResponse:
        return parse(await self._send(calls.verify(first, second, threshold)), VerifyResponse)

    async def verify_subject(
        self,
        image: ImageInput,
        subject: str,
        *,
        threshold: float | None = None,
        collection: str | None = None,
    ) -> VerifyResponse:
        call = calls.verify_subject(self._in(collection), image, subject, threshold)
        return parse(await self._send(call), VerifyResponse)

    async def embed(self, image: ImageInput) -> EmbedResponse:
        return parse(await self._send(calls.embed(image)), EmbedResponse)

    # --- gallery --------------------------------------------------------------------------

    async def subjects(
        self, *, limit: int = 50, offset: int = 0, collection: str | None = None
    ) -> SubjectPage:
        return parse(
            await self._send(calls.subjects(self._in(collection), limit, offset)), SubjectPage
        )

    async def subject(self, name: str, *, collection: str | None = None) -> SubjectDetail:
        return parse(await self._send(calls.subject(self._in(collection), name)), SubjectDetail)

    async def delete_subject(
        self, name: str, *, collection: str | None = None
    ) -> DeleteSubjectResponse:
        call = calls.delete_subject(self._in(collection), name)
        return parse(await self._send(call), DeleteSubjectResponse)

    async def delete_face(
        self, face_id: str, *, collection: str | None = None
    ) -> DeleteFaceResponse:
        call = calls.delete_face(self._in(collection), face_id)
        return parse(await self._send(call), DeleteFaceResponse)

    async def face_crop(self, face_id: str, *, collection: str | None = None) -> bytes:
        """The face's 112x112 aligned crop as PNG bytes."""
        return content(await self._send(calls.face_crop(self._in(collection), face_id)))

    async def collections(self) -> CollectionList:
        return parse(await self._send(calls.collections()), CollectionList)

    async def ready(self) -> ReadyResponse:
        return parse(await self._send(calls.ready()), ReadyResponse)

    # --- live -----------------------------------------------------------------------------

    def stream(self, *, collection: str | None = None, max_size: int = 1 << 20) -> AsyncLiveStream:
        """A live-recognition WebSocket: ``async with client.stream() as live``, then
        ``await live.send(jpeg)`` and ``await live.receive()``."""
        return AsyncLiveStream(
            stream_url(self.base_url, self._in(collection)), self._api_key, max_size=max_size
        )

    # --- plumbing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFaceRecClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _in(self, collection: str | None) -> str:
        return collection or self.collection

    async def _send(self, call: Call) -> httpx.Response:
        return await self._http.request(
            call.method,
            call.path,
            params=call.params,
            data=call.data,
            files=call.files,
            json=call.json,
        )
