"""Gallery management endpoints."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query

from app.api.deps import RuntimeDep, validate_subject
from app.auth.dependencies import ACCESS_ERRORS, AuthorizedCollection
from app.core.types import FaceRecord
from app.schemas import (
    DeleteFaceResponse,
    DeleteSubjectResponse,
    ErrorResponse,
    FaceOut,
    SubjectDetail,
    SubjectOut,
    SubjectPage,
)

router = APIRouter(tags=["gallery"], responses=ACCESS_ERRORS)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "unknown subject or face"}
}
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
    runtime: RuntimeDep, subject: SubjectPath, collection: AuthorizedCollection
) -> DeleteSubjectResponse:
    name = validate_subject(subject)
    deleted = await anyio.to_thread.run_sync(
        lambda: runtime.service.gallery.delete_subject(collection, name)
    )
    return DeleteSubjectResponse(subject=name, deleted_faces=deleted)


@router.delete("/faces/{face_id}", response_model=DeleteFaceResponse, responses=NOT_FOUND)
async def delete_face(
    runtime: RuntimeDep,
    face_id: Annotated[str, Path(max_length=64)],
    collection: AuthorizedCollection,
) -> DeleteFaceResponse:
    record = await anyio.to_thread.run_sync(
        lambda: runtime.service.gallery.delete_face(collection, face_id)
    )
    return DeleteFaceResponse(face_id=record.face_id, subject=record.subject)
