"""Recognition endpoints: enroll, identify, verify, embed. Thin: parse, offload, shape."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status

from app.api.deps import (
    CollectionParam,
    RuntimeDep,
    model_info,
    read_upload,
    run_inference,
    validate_subject,
)
from app.auth.dependencies import (
    ACCESS_ERRORS,
    AuthorizedCollection,
    Caller,
    authenticated,
)
from app.auth.guard import require_collection
from app.core.service import EnrollResult, FacePolicy, IdentifiedFace
from app.core.types import Detection, SearchHit
from app.errors import InvalidRequest
from app.schemas import (
    Candidate,
    EmbeddedFaceOut,
    EmbedResponse,
    EnrolledFace,
    EnrollResponse,
    ErrorResponse,
    IdentifiedFaceOut,
    IdentifyResponse,
    RejectedImage,
    VerifyResponse,
)
from app.stream.unknowns import enroll_unknown

if TYPE_CHECKING:
    from app.main import Runtime

router = APIRouter(
    tags=["recognition"],
    responses={
        **ACCESS_ERRORS,
        503: {"model": ErrorResponse, "description": "server_busy: retry after Retry-After"},
    },
)
# Routes that run inference: admitted at most inference_workers + inference_queue at once.
INFERENCE_PATHS = frozenset({"/enroll", "/identify", "/verify", "/embed"})

IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "undecodable image, or a malformed body"},
    413: {"model": ErrorResponse, "description": "image or request too large (bytes or pixels)"},
    415: {"model": ErrorResponse, "description": "unsupported image format"},
    422: {"model": ErrorResponse, "description": "invalid form, or no usable face"},
}
ImageFile = Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")]
Threshold = Annotated[
    float | None, Form(ge=-1, le=1, description="similarity threshold; default from the model")
]


def _detection_fields(detection: Detection) -> dict[str, Any]:
    return {
        "bbox": detection.bbox,
        "det_score": detection.score,
        "landmarks": [(float(x), float(y)) for x, y in detection.landmarks],
    }


def _candidate(hit: SearchHit) -> Candidate:
    return Candidate(subject=hit.subject, similarity=hit.similarity, face_id=hit.face_id)


def _identified(face: IdentifiedFace) -> IdentifiedFaceOut:
    return IdentifiedFaceOut(
        **_detection_fields(face.face.detection),
        candidates=[_candidate(hit) for hit in face.candidates],
        match=_candidate(face.match) if face.match else None,
    )


@router.post(
    "/enroll",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollResponse,
    responses={
        **IMAGE_ERRORS,
        404: {"model": ErrorResponse, "description": "unknown_not_found (with unknown_id)"},
    },
    summary="Enroll a subject from one or more photos",
)
async def enroll(
    runtime: RuntimeDep,
    request: Request,
    caller: Caller,
    collection: AuthorizedCollection,
    subject: Annotated[str, Form(description="the person's name or id")],
    images: Annotated[
        list[UploadFile] | None, File(description="one face per photo (or send unknown_id)")
    ] = None,
    face_policy: Annotated[
        Literal["single", "largest"],
        Form(description="single: reject photos with several faces; largest: use the largest"),
    ] = "single",
    unknown_id: Annotated[
        str | None,
        Form(
            max_length=64,
            description="instead of images: an unknown face of a live stream (its unknown_id), "
            "enrolled from the crops the server kept; only the key that opened the stream, "
            "in its collection",
        ),
    ] = None,
) -> EnrollResponse:
    """Each photo contributes one face. Photos that fail the face policy or the quality
    gates are listed in `rejected` with a machine-readable code; when no photo is usable
    the request fails with the first photo's error. Re-enrolling the same photo for the
    same subject is idempotent (`created: false`). With `unknown_id` instead of photos,
    the unknown face's best crops from the stream pass the same gates (404
    `unknown_not_found` when the id is unknown, expired, or not this key's)."""
    name = validate_subject(subject)
    if unknown_id is not None:
        if images:
            raise InvalidRequest("send either images or unknown_id, not both")
        owner = caller.key_id if caller is not None else None
        store = request.app.state.streams.unknowns
        result = await run_inference(
            runtime,
            lambda: enroll_unknown(
                runtime.service,
                store,
                collection=collection,
                subject=name,
                unknown_id=unknown_id,
                owner=owner,
            ),
        )
    else:
        result = await _enroll_photos(runtime, collection, name, images or [], face_policy)
    return EnrollResponse(
        collection=collection,
        subject=result.subject,
        faces=[
            EnrolledFace(
                face_id=record.face_id,
                image_sha256=record.image_sha256,
                bbox=record.bbox,
                det_score=record.det_score,
                created=created,
            )
            for record, created in result.faces
        ],
        rejected=[
            RejectedImage(image=r.image, code=r.error.code, message=r.error.message)
            for r in result.rejected
        ],
    )


async def _enroll_photos(
    runtime: Runtime,
    collection: str,
    name: str,
    images: list[UploadFile],
    face_policy: FacePolicy,
) -> EnrollResult:
    if not images:
        raise InvalidRequest("send one or more images (or the unknown_id of a stream's face)")
    limit = runtime.settings.max_images_per_enroll
    if len(images) > limit:
        raise InvalidRequest(f"at most {limit} images per enroll request", limit=limit)
    uploads = [
        (
            upload.filename or f"image[{index}]",
            await read_upload(upload, runtime.settings.max_image_bytes),
        )
        for index, upload in enumerate(images)
    ]
    service = runtime.service
    # Cheap refusals first (gallery and image headers, no inference), then one inference
    # turn per photo so other tenants' requests interleave with a long enrollment.
    await anyio.to_thread.run_sync(service.subject_names.check, collection, name)
    await anyio.to_thread.run_sync(service.check_request_pixels, [data for _, data in uploads])
    outcomes = [
        await run_inference(runtime, partial(service.enrollment_face, filename, data, face_policy))
        for filename, data in uploads
    ]
    return await anyio.to_thread.run_sync(service.commit_enrollment, collection, name, outcomes)


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    responses=IMAGE_ERRORS,
    summary="Who is in this photo?",
)
async def identify(
    runtime: RuntimeDep,
    collection: AuthorizedCollection,
    image: ImageFile,
    top_k: Annotated[int | None, Form(ge=1, description="candidates per face")] = None,
    threshold: Threshold = None,
) -> IdentifyResponse:
    """Every face in the photo with its closest subjects. `match` is the best candidate at or
    above the threshold, or null (unknown). One subject is never matched to two faces of
    the same photo. A photo without faces gives an empty `faces` list."""
    k = top_k or runtime.settings.default_top_k
    if k > runtime.settings.max_top_k:
        raise InvalidRequest(f"top_k must be at most {runtime.settings.max_top_k}")
    data = await read_upload(image, runtime.settings.max_image_bytes)
    faces, used = await run_inference(
        runtime,
        lambda: runtime.service.identify(collection, data, top_k=k, threshold=threshold),
    )
    return IdentifyResponse(
        collection=collection,
        model=model_info(runtime),
        threshold=used,
        faces=[_identified(face) for face in faces],
    )


@router.post(
    "/verify",
    response_model=VerifyResponse,
    responses={**IMAGE_ERRORS, 404: {"model": ErrorResponse, "description": "unknown subject"}},
    summary="Are these the same person?",
)
async def verify(
    runtime: RuntimeDep,
    caller: Caller,
    image_a: Annotated[UploadFile | None, File(description="first photo")] = None,
    image_b: Annotated[UploadFile | None, File(description="second photo")] = None,
    image: Annotated[UploadFile | None, File(description="photo to check against subject")] = None,
    subject: Annotated[str | None, Form(description="enrolled subject")] = None,
    threshold: Threshold = None,
    collection: CollectionParam = "default",
) -> VerifyResponse:
    """Either `image_a` + `image_b` (largest face of each), or `image` + `subject` (largest
    face against the subject's closest enrolled face)."""
    limit = runtime.settings.max_image_bytes
    if image_a is not None and image_b is not None and image is None and subject is None:
        data_a, data_b = await read_upload(image_a, limit), await read_upload(image_b, limit)
        result = await run_inference(
            runtime, lambda: runtime.service.verify_images(data_a, data_b, threshold)
        )
    elif image is not None and subject is not None and image_a is None and image_b is None:
        require_collection(caller, collection)
        name = validate_subject(subject)
        data = await read_upload(image, limit)
        result = await run_inference(
            runtime, lambda: runtime.service.verify_subject(collection, data, name, threshold)
        )
    else:
        raise InvalidRequest("send either image_a and image_b, or image and subject")
    return VerifyResponse(
        similarity=result.similarity,
        threshold=result.threshold,
        match=result.match,
        model=model_info(runtime),
    )


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=IMAGE_ERRORS,
    summary="Detect every face and return its embedding",
    dependencies=[Depends(authenticated)],
)
async def embed(runtime: RuntimeDep, image: ImageFile) -> EmbedResponse:
    """L2-normalised embeddings of every face (cosine similarity = dot product)."""
    data = await read_upload(image, runtime.settings.max_image_bytes)
    faces = await run_inference(runtime, lambda: runtime.service.embed(data))
    return EmbedResponse(
        model=model_info(runtime),
        faces=[
            EmbeddedFaceOut(
                **_detection_fields(face.detection),
                embedding=[float(v) for v in face.embedding],
            )
            for face in faces
        ],
    )
