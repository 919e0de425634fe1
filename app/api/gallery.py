"""Gallery management endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request, Response

from app.api.deps import RuntimeDep, on_serving_runtime, validate_subject
from app.api.openapi import ACCESS_CODES, error_responses
from app.auth.dependencies import AuthorizedCollection, Caller
from app.auth.keys import ALL_COLLECTIONS
from app.core.types import FaceRecord
from app.errors import CropNotFound
from app.schemas import (
    CollectionList,
    CollectionOut,
    DeleteFaceResponse,
    DeleteSubjectResponse,
    FaceOut,
    SubjectDetail,
    SubjectOut,
    SubjectPage,
)

if TYPE_CHECKING:
    from app.main import Runtime

router = APIRouter(tags=["gallery"], responses=error_responses(*ACCESS_CODES, "invalid_request"))
NOT_FOUND: dict[int | str, dict[str, Any]] = error_responses("subject_not_found")
FACE_NOT_FOUND: dict[int | str, dict[str, Any]] = error_responses("face_not_found")
SubjectPath = Annotated[str, Path(description="subject name, URL-encoded")]
# Paging offsets go to SQLite, whose integers are 64-bit: bound them well below.
MAX_OFFSET = 1_000_000_000


def _face(record: FaceRecord) -> FaceOut:
    return FaceOut(
        face_id=record.face_id,
        image_sha256=record.image_sha256,
        bbox=record.bbox,
        det_score=record.det_score,
        model_id=record.model_id,
        created_at=record.created_at,
    )


@router.get("/subjects", response_model=SubjectPage, summary="List enrolled subjects")
async def list_subjects(
    runtime: RuntimeDep,
    collection: AuthorizedCollection,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SubjectPage:
    gallery = runtime.service.gallery
    subjects, total = await anyio.to_thread.run_sync(
        lambda: gallery.list_subjects(collection, limit=limit, offset=offset)
    )
    return SubjectPage(
        collection=collection,
        items=[
            SubjectOut(
                subject=s.subject,
                face_count=s.face_count,
                created_at=s.created_at,
                updated_at=s.updated_at,
            )
            for s in subjects
        ],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/subjects/{subject}", response_model=SubjectDetail, responses=NOT_FOUND)
async def get_subject(
    runtime: RuntimeDep, subject: SubjectPath, collection: AuthorizedCollection
) -> SubjectDetail:
    name = validate_subject(subject)
    summary, faces = await anyio.to_thread.run_sync(
        lambda: runtime.service.gallery.get_subject(collection, name)
    )
    return SubjectDetail(
        collection=collection,
        subject=summary.subject,
        face_count=summary.face_count,
        created_at=summary.created_at,
        updated_at=summary.updated_at,
        faces=[_face(face) for face in faces],
    )


@router.delete("/subjects/{subject}", response_model=DeleteSubjectResponse, responses=NOT_FOUND)
async def delete_subject(
    request: Request, runtime: RuntimeDep, subject: SubjectPath, collection: AuthorizedCollection
) -> DeleteSubjectResponse:
    name = validate_subject(subject)

    async def delete(serving: Runtime) -> int:
        return await anyio.to_thread.run_sync(
            lambda: serving.service.gallery.delete_subject(collection, name)
        )

    deleted = await on_serving_runtime(request, runtime, delete)
    return DeleteSubjectResponse(subject=name, deleted_faces=deleted)


@router.delete("/faces/{face_id}", response_model=DeleteFaceResponse, responses=FACE_NOT_FOUND)
async def delete_face(
    request: Request,
    runtime: RuntimeDep,
    face_id: Annotated[str, Path(max_length=64)],
    collection: AuthorizedCollection,
) -> DeleteFaceResponse:
    async def delete(serving: Runtime) -> FaceRecord:
        return await anyio.to_thread.run_sync(
            lambda: serving.service.gallery.delete_face(collection, face_id)
        )

    record = await on_serving_runtime(request, runtime, delete)
    return DeleteFaceResponse(face_id=record.face_id, subject=record.subject)


# Crops are biometric data: never cached by a browser or a proxy, never content-sniffed.
CROP_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}


@router.get(
    "/faces/{face_id}/crop",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the 112x112 aligned face, PNG"},
        **error_responses("face_not_found", "crop_not_found"),
    },
    summary="A face's stored aligned crop (thumbnail)",
)
async def face_crop(
    runtime: RuntimeDep,
    face_id: Annotated[str, Path(max_length=64)],
    collection: AuthorizedCollection,
) -> Response:
    """The 112x112 crop the face was embedded from, as enrolled. 404 `crop_not_found` when
    the service keeps no crops (`FACEREC_STORE_ALIGNED_CROPS=false`) or kept none for
    this face."""
    png = await anyio.to_thread.run_sync(
        lambda: runtime.service.gallery.face_crop(collection, face_id)
    )
    if png is None or not runtime.settings.store_aligned_crops:
        raise CropNotFound(
            f"no aligned crop is kept for face {face_id!r}"
            + (
                ""
                if runtime.settings.store_aligned_crops
                else " (FACEREC_STORE_ALIGNED_CROPS=false)"
            ),
            face_id=face_id,
        )
    return Response(png, media_type="image/png", headers=CROP_HEADERS)


# Not behind a collection: no 403, no query parameters to get wrong.
collections_router = APIRouter(tags=["gallery"])


@collections_router.get(
    "/collections",
    response_model=CollectionList,
    responses=error_responses("unauthorized", "rate_limited"),
    summary="The collections this API key may use",
)
async def list_collections(runtime: RuntimeDep, caller: Caller) -> CollectionList:
    """A key scoped to named collections sees those (empty ones too); an admin key, a
    `*` key, or any caller with auth off sees every collection holding faces."""
    counts = await anyio.to_thread.run_sync(runtime.service.gallery.stats)
    scope = None if caller is None or caller.admin else set(caller.collections)
    everything = scope is None or ALL_COLLECTIONS in scope
    names = sorted(counts) if scope is None or everything else sorted(scope)
    return CollectionList(
        items=[CollectionOut(name=name, faces=counts.get(name, 0)) for name in names],
        all_collections=everything,
    )
