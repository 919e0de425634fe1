"""Per-collection open-set settings and the look-alike report (docs/openset.md).

Both are reached by any key allowed the collection (the path names it): a tenant sets
its own target FPIR, and sees the look-alikes among its own subjects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Path, Query, Request

from app.api.deps import COLLECTION_PATTERN, RuntimeDep, on_serving_runtime, run_inference
from app.api.openapi import error_responses
from app.auth.dependencies import Caller
from app.auth.guard import require_collection
from app.core.lookalikes import LookalikeReport
from app.core.thresholds import CollectionSettings, CollectionSettingsStore, ThresholdPolicy
from app.errors import InvalidRequest
from app.schemas import (
    CollectionSettingsIn,
    CollectionSettingsOut,
    LookalikePairOut,
    LookalikeReportOut,
)

if TYPE_CHECKING:
    from app.main import Runtime

router = APIRouter(
    tags=["gallery"],
    responses=error_responses("unauthorized", "forbidden", "rate_limited", "invalid_request"),
)
CollectionPath = Annotated[
    str, Path(pattern=COLLECTION_PATTERN, description="gallery namespace; letters, digits, _ . -")
]


def _settings_out(runtime: Runtime, collection: str) -> CollectionSettingsOut:
    policy = runtime.service.thresholds
    assert policy is not None  # the composition root always builds one
    applied = policy.threshold(collection)
    return CollectionSettingsOut(
        collection=collection,
        target_fpir=policy.stored_target(collection),
        default_target_fpir=policy.config.default_target_fpir,
        effective_target_fpir=policy.target_for(collection),
        threshold=applied.threshold,
        gallery_size=applied.gallery_size,
        threshold_source=applied.source,
        per_comparison_far=applied.per_comparison_far,
        method=policy.describes,
    )


@router.get(
    "/collections/{collection}/settings",
    response_model=CollectionSettingsOut,
    summary="A collection's target FPIR and the threshold identify applies now",
)
async def get_settings(
    runtime: RuntimeDep, caller: Caller, collection: CollectionPath
) -> CollectionSettingsOut:
    """The collection's own target FPIR (null: the service default), and the threshold
    derived from it for the collection's current size, with how it was derived."""
    require_collection(caller, collection)
    return await anyio.to_thread.run_sync(lambda: _settings_out(runtime, collection))


@router.put(
    "/collections/{collection}/settings",
    response_model=CollectionSettingsOut,
    responses=error_responses("malformed_request"),
    summary="Set a collection's target FPIR",
)
async def put_settings(
    request: Request,
    runtime: RuntimeDep,
    caller: Caller,
    collection: CollectionPath,
    body: CollectionSettingsIn,
) -> CollectionSettingsOut:
    """Store the collection's target false positive identification rate (null: back to
    the service default). Durable, and seen by every replica within a second."""
    require_collection(caller, collection)
    _settings_policy(runtime)

    async def apply(serving: Runtime) -> CollectionSettingsOut:
        def write() -> CollectionSettingsOut:
            policy, store = _settings_policy(serving)
            store.set_collection_settings(
                collection, CollectionSettings(target_fpir=body.target_fpir)
            )
            policy.forget(collection)
            return _settings_out(serving, collection)

        return await anyio.to_thread.run_sync(write)

    # A model swap may switch generations while the write waits: it then lands in the new one.
    return await on_serving_runtime(request, runtime, apply)


def _settings_policy(runtime: Runtime) -> tuple[ThresholdPolicy, CollectionSettingsStore]:
    policy = runtime.service.thresholds
    if policy is None or policy.store is None:
        raise InvalidRequest("this gallery backend keeps no per-collection settings")
    return policy, policy.store


@router.get(
    "/collections/{collection}/lookalikes",
    response_model=LookalikeReportOut,
    summary="Pairs of different subjects whose enrolled faces are the closest",
)
async def lookalikes(
    runtime: RuntimeDep,
    caller: Caller,
    collection: CollectionPath,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> LookalikeReportOut:
    """Twins, siblings, look-alikes, or one person enrolled twice: for every subject, the
    nearest other subject (one top-2 search per enrolled face, never all pairs), most
    similar first. Computed once per change of the collection and kept (one scan at a
    time per collection, in the inference workers); searches at most
    FACEREC_LOOKALIKE_MAX_FACES faces (`complete` says whether all were)."""
    require_collection(caller, collection)
    reports = runtime.service.lookalikes
    assert reports is not None  # the composition root always builds one
    report: LookalikeReport = await run_inference(runtime, lambda: reports.current(collection))
    applied = await anyio.to_thread.run_sync(
        lambda: runtime.service.identification_threshold(
            collection, threshold=None, target_fpir=None
        )
    )
    page = report.pairs[offset : offset + limit]
    return LookalikeReportOut(
        collection=collection,
        threshold=applied.threshold,
        faces_scanned=report.faces_scanned,
        complete=report.complete,
        pairs=[
            LookalikePairOut(
                subject_a=pair.subject_a,
                subject_b=pair.subject_b,
                similarity=pair.similarity,
                face_a=pair.face_a,
                face_b=pair.face_b,
                above_threshold=pair.similarity >= applied.threshold,
            )
            for pair in page
        ],
        total=len(report.pairs),
        limit=limit,
        offset=offset,
    )
