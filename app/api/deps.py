"""Dependencies shared by the routers: the runtime, validated names, inference offload.

Request bodies of the image endpoints are read by ``app.api.bodies``."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import anyio
from fastapi import Depends, Query, Request

from app.api.limits import current_tenant
from app.core.names import clean_name
from app.errors import GenerationRetired, InvalidRequest
from app.schemas import ModelInfo

if TYPE_CHECKING:
    from app.main import Runtime

T = TypeVar("T")

# Collections are namespaces that may become file or metric names: keep them tame.
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Subjects are people's names in any script, under the one name policy
# (app.core.names); they appear in URL paths, so no slashes either.
_SUBJECT_FORBIDDEN = re.compile(r"[/\\]")
SUBJECT_MAX_LENGTH = 128


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated["Runtime", Depends(get_runtime)]
CollectionParam = Annotated[
    str,
    Query(pattern=COLLECTION_PATTERN, description="gallery namespace; letters, digits, _ . -"),
]


def validate_subject(subject: str) -> str:
    """The subject's name under the name policy (NFC), addressable in a URL path."""
    name = clean_name(subject, field="subject", max_length=SUBJECT_MAX_LENGTH)
    if name in {".", ".."} or _SUBJECT_FORBIDDEN.search(name):
        raise InvalidRequest("subject must not be '.' or '..' nor contain '/' or '\\'")
    return name


def validate_collection(collection: str) -> str:
    """The rule ``CollectionParam`` applies to requests, for callers outside one (the CLI)."""
    if not re.fullmatch(COLLECTION_PATTERN, collection):
        raise InvalidRequest(
            f"collection {collection!r} must be 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            field="collection",
        )
    return collection


async def run_inference(runtime: Runtime, function: Callable[[], T]) -> T:
    """Run one turn of blocking inference off the event loop.

    At most ``inference_workers`` turns run at once; waiting turns are granted
    round-robin across tenants (API keys, see ``app.api.limits.FairTurns``).
    """
    async with runtime.turns.turn(current_tenant()):
        return await anyio.to_thread.run_sync(function, limiter=runtime.inference_limiter)


def model_info(runtime: Runtime) -> ModelInfo:
    return ModelInfo(
        detector=runtime.detector.manifest.model_id,
        recognizer=runtime.recognizer.manifest.model_id,
    )


async def on_serving_runtime(
    request: Request, runtime: Runtime, write: Callable[[Runtime], Awaitable[T]]
) -> T:
    """Run a gallery write on ``runtime``; if the recognizer switched while it waited at
    the swap's write barrier (``GenerationRetired``: nothing was written), run it once
    more on the runtime serving now, so the write lands in the new generation."""
    try:
        return await write(runtime)
    except GenerationRetired:
        current: Runtime = request.app.state.runtime
        if current is runtime:
            raise
        return await write(current)
