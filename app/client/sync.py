"""The blocking client (httpx.Client)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import httpx

from app.client import calls
from app.client.requests import Call, ImageInput, content, headers, parse
from app.client.stream import LiveStream, stream_url
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


class FaceRecClient:
    """The facerec API over one HTTP connection pool. Every method takes ``collection``;
    ``None`` means the client's own (``default`` unless given)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        collection: str = "default",
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.collection = collection
        self._api_key = headers(api_key)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._api_key, timeout=timeout, transport=transport
        )

    # --- recognition --------------------------------------------------------------------

    def enroll(
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
        return parse(self._send(call), EnrollResponse)

    def identify(
        self,
        image: ImageInput,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        collection: str | None = None,
    ) -> IdentifyResponse:
        call = calls.identify(self._in(collection), image, top_k, threshold)
        return parse(self._send(call), IdentifyResponse)

    def verify(
        self, first: ImageInput, second: ImageInput, *, threshold: float | None = None
    ) -> VerifyResponse:
        return parse(self._send(calls.verify(first, second, threshold)), VerifyResponse)

    def verify_subject(
        self,
        image: ImageInput,
        subject: str,
        *,
        threshold: float | None = None,
        collection: str | None = None,
    ) -> VerifyResponse:
        call = calls.verify_subject(self._in(collection), image, subject, threshold)
        return parse(self._send(call), VerifyResponse)

    def embed(self, image: ImageInput) -> EmbedResponse:
        return parse(self._send(calls.embed(image)), EmbedResponse)

    # --- gallery --------------------------------------------------------------------------

    def subjects(
        self, *, limit: int = 50, offset: int = 0, collection: str | None = None
    ) -> SubjectPage:
        return parse(self._send(calls.subjects(self._in(collection), limit, offset)), SubjectPage)

    def subject(self, name: str, *, collection: str | None = None) -> SubjectDetail:
        return parse(self._send(calls.subject(self._in(collection), name)), SubjectDetail)

    def delete_subject(self, name: str, *, collection: str | None = None) -> DeleteSubjectResponse:
        call = calls.delete_subject(self._in(collection), name)
        return parse(self._send(call), DeleteSubjectResponse)

    def delete_face(self, face_id: str, *, collection: str | None = None) -> DeleteFaceResponse:
        call = calls.delete_face(self._in(collection), face_id)
        return parse(self._send(call), DeleteFaceResponse)

    def face_crop(self, face_id: str, *, collection: str | None = None) -> bytes:
        """The face's 112x112 aligned crop as PNG bytes."""
        return content(self._send(calls.face_crop(self._in(collection), face_id)))

    def collections(self) -> CollectionList:
        return parse(self._send(calls.collections()), CollectionList)

    def ready(self) -> ReadyResponse:
        return parse(self._send(calls.ready()), ReadyResponse)

    # --- live -----------------------------------------------------------------------------

    def stream(self, *, collection: str | None = None, max_size: int = 1 << 20) -> LiveStream:
        """A live-recognition WebSocket: ``send(jpeg)`` frames, ``receive()`` answers.
        Use it as a context manager."""
        return LiveStream.connect(
            stream_url(self.base_url, self._in(collection)), self._api_key, max_size=max_size
        )

    # --- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FaceRecClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _in(self, collection: str | None) -> str:
        return collection or self.collection

    def _send(self, call: Call) -> httpx.Response:
        return self._http.request(
            call.method,
            call.path,
            params=call.params,
            data=call.data,
            files=call.files,
            json=call.json,
        )
