"""Dependencies shared by the routers: the runtime, validated names, inference offload."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import anyio
from fastapi import Depends, Query, Request, UploadFile

from app.errors import ImageTooLarge, InvalidRequest
from app.schemas import ModelInfo

if TYPE_CHECKING:
    from app.main import Runtime

T = TypeVar("T")

# Collections are namespaces that may become file or metric names: keep them tame.
_COLLECTION = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Subjects are people's names in any script; they appear in URL paths, so no
# slashes; and they get printed, so no control characters (C0, C1) and no
# line or paragraph separators.
_SUBJECT_FORBIDDEN = re.compile(r"[/\\]")
_SUBJECT_FORBIDDEN_CATEGORIES = {"Cc", "Zl", "Zp"}
SUBJECT_MAX_LENGTH = 128


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated["Runtime", Depends(get_runtime)]
CollectionParam = Annotated[
    str,
    Query(pattern=_COLLECTION, description="gallery namespace; letters, digits, _ . -"),
]


def validate_subject(subject: str) -> str:
    """Reject names that cannot be addressed in a URL or printed safely."""
    name = subject.strip()
    if not name or name in {".", ".."} or len(name) > SUBJECT_MAX_LENGTH:
        raise InvalidRequest(
            f"subject must be 1 to {SUBJECT_MAX_LENGTH} characters and not '.' or '..'",
        )
    if _SUBJECT_FORBIDDEN.search(name) or any(
        unicodedata.category(char) in _SUBJECT_FORBIDDEN_CATEGORIES for char in name
    ):
        raise InvalidRequest("subject must not contain '/', '\\' or control characters")
    return name


def validate_collection(collection: str) -> str:
    """The rule ``CollectionParam`` applies to requests, for callers outside one (the CLI)."""
    if not re.fullmatch(_COLLECTION, collection):
        raise InvalidRequest(
            f"collection {collection!r} must be 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            field="collection",
        )
    return collection


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """Read an upload, refusing to hold more than ``max_bytes`` of it in memory."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"{upload.filename or 'image'} is larger than {max_bytes} bytes", max_bytes=max_bytes
        )
    return data


async def run_inference(runtime: Runtime, function: Callable[[], T]) -> T:
    """Run blocking inference off the event loop, at most ``inference_workers`` at once."""
    return await anyio.to_thread.run_sync(function, limiter=runtime.inference_limiter)


def model_info(runtime: Runtime) -> ModelInfo:
    return ModelInfo(
        detector=runtime.detector.manifest.model_id,
        recognizer=runtime.recognizer.manifest.model_id,
    )
