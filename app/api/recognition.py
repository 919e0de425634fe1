"""Recognition endpoints: enroll, identify, verify, embed. Thin: parse, offload, shape.

Each takes a ``multipart/form-data`` form or an ``application/json`` object with base64
images, under the same field names (``app.api.bodies``); the request bodies are
described in the OpenAPI document by ``request_body`` below.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel

from app.api.bodies import (
    JSON,
    MULTIPART,
    ImageFields,
    read_body,
    require_images,
    validate_fields,
)
from app.api.deps import (
    CollectionParam,
    RuntimeDep,
    model_info,
    on_serving_runtime,
    run_inference,
    validate_subject,
)
from app.api.openapi import ACCESS_CODES, IMAGE_CODES, error_responses
from app.auth.dependencies import AuthorizedCollection, Caller, authenticated
from app.auth.guard import require_collection
from app.core.quality import FaceQuality
from app.core.service import EnrollResult, FacePolicy, IdentifiedFace
from app.core.types import Detection, SearchHit
from app.errors import InvalidRequest
from app.schemas import (
    Candidate,
    EmbeddedFaceOut,
    EmbedFields,
    EmbedResponse,
    EnrolledFace,
    EnrollFields,
    EnrollResponse,
    EnrollWarning,
    IdentifiedFaceOut,
    IdentifyFields,
    IdentifyResponse,
    LookalikeOut,
    PoseOut,
    QualityOut,
    RejectedImage,
    VerifyFields,
    VerifyResponse,
)
from app.stream.unknowns import enroll_unknown

if TYPE_CHECKING:
    from app.main import Runtime

router = APIRouter(tags=["recognition"])
# Routes that run inference: admitted at most inference_workers + inference_queue at once.
INFERENCE_PATHS = frozenset({"/enroll", "/identify", "/verify", "/embed"})
FACE_CODES = ("no_face", "multiple_faces", "face_too_small", "low_det_score", "low_quality")

ENROLL_IMAGES = ImageFields(multiple=("images",))
IDENTIFY_IMAGES = ImageFields(single=("image",))
VERIFY_IMAGES = ImageFields(single=("image_a", "image_b", "image"))
EMBED_IMAGES = ImageFields(single=("image",))

_FILE = {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP or BMP"}
_BASE64 = {
    "type": "string",
    "contentEncoding": "base64",
    "description": "a JPEG, PNG, WebP or BMP image, base64; a data:image/...;base64, prefix "
    "is allowed",
}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _body_schema(
    image: dict[str, Any], fields: type[BaseModel], single: tuple[str, ...], many: tuple[str, ...]
) -> dict[str, Any]:
    schema = fields.model_json_schema()
    properties = {
        name: {**image, "description": f"{name}: {image['description']}"} for name in single
    }
    properties |= {
        name: {"type": "array", "items": image, "minItems": 1, "description": "one face per photo"}
        for name in many
    }
    return _object(properties | schema["properties"], [*single, *many, *schema.get("required", [])])


def request_body(
    fields: type[BaseModel], *, single: tuple[str, ...] = (), many: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``openapi_extra`` describing the same fields as a form (files) and as JSON (base64)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {"schema": _body_schema(_FILE, fields, single, many)},
                JSON: {"schema": _body_schema(_BASE64, fields, single, many)},
            },
        }
    }


def _verify_body() -> dict[str, Any]:
    """Two alternative field sets: a pair of photos, or a photo and an enrolled subject."""
    threshold = VerifyFields.model_json_schema()["properties"]["threshold"]
    subject = {"type": "string", "description": "an enrolled subject of the collection"}

    def variants(image: dict[str, Any]) -> dict[str, Any]:
        pair = _object(
            {"image_a": image, "image_b": image, "threshold": threshold}, ["image_a", "image_b"]
        )
        against = _object(
            {"image": image, "subject": subject, "threshold": threshold}, ["image", "subject"]
        )
        pair["title"], against["title"] = "two photos", "a photo and a subject"
        return {"oneOf": [pair, against]}

    return {
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {"schema": variants(_FILE)},
                JSON: {"schema": variants(_BASE64)},
            },
        }
    }


def _detection_fields(detection: Detection) -> dict[str, Any]:
    return {
        "bbox": detection.bbox,
        "det_score": detection.score,
        "landmarks": [(float(x), float(y)) for x, y in detection.landmarks],
    }


def quality_out(quality: FaceQuality) -> QualityOut:
    return QualityOut(
        score=quality.score,
        size=quality.size,
        sharpness=quality.sharpness,
        pose=PoseOut(yaw=quality.pose.yaw, pitch=quality.pose.pitch, roll=quality.pose.roll),
        det_score=quality.det_score,
        reasons=list(quality.reasons),
    )


def _candidate(hit: SearchHit) -> Candidate:
    return Candidate(subject=hit.subject, similarity=hit.similarity, face_id=hit.face_id)


def _identified(face: IdentifiedFace) -> IdentifiedFaceOut:
    return IdentifiedFaceOut(
        **_detection_fields(face.face.detection),
        quality=quality_out(face.quality),
        candidates=[_candidate(hit) for hit in face.candidates],
        match=_candidate(face.match) if face.match else None,
        match_lookalikes=[
            LookalikeOut(subject=subject, similarity=similarity)
            for subject, similarity in face.lookalikes
        ],
    )


@router.post(
    "/enroll",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollResponse,
    responses=error_responses(
        *ACCESS_CODES,
        *IMAGE_CODES,
        *FACE_CODES,
        "matches_other_subject",
        "unknown_not_found",
        "name_conflict",
    ),
    summary="Enroll a subject from one or more photos",
    openapi_extra=request_body(EnrollFields, many=ENROLL_IMAGES.multiple),
)
async def enroll(
    request: Request, runtime: RuntimeDep, caller: Caller, collection: AuthorizedCollection
) -> EnrollResponse:
    """Each photo contributes one face. Photos that fail the face policy or the quality
    gates are listed in `rejected` with a machine-readable code; when no photo is usable
    the request fails with the first photo's error. Re-enrolling the same photo for the
    same subject is idempotent (`created: false`). A face that already matches another
    subject is enrolled with a `matches_other_subject` warning, or refused with a 409
    when `strict` is true. With `unknown_id` instead of photos, the unknown face's best
    crops from a live stream pass the same gates (404 `unknown_not_found` when the id is
    unknown, expired, or not this key's)."""
    settings = runtime.settings
    body = await read_body(
        request,
        ENROLL_IMAGES,
        max_image_bytes=settings.max_image_bytes,
        max_images=settings.max_images_per_enroll,
    )
    fields = validate_fields(EnrollFields, body)
    name = validate_subject(fields.subject)
    if fields.unknown_id is not None:
        if body.many("images"):
            raise InvalidRequest("send either images or unknown_id, not both")
        owner = caller.key_id if caller is not None else None
        store = request.app.state.streams.unknowns
        unknown_id = fields.unknown_id
        result = await run_inference(
            runtime,
            lambda: enroll_unknown(
                runtime.service,
                store,
                collection=collection,
                subject=name,
                unknown_id=unknown_id,
                owner=owner,
                strict=fields.strict,
            ),
        )
    else:
        uploads = [(upload.name, upload.data) for upload in require_images(body, "images")]
        policy, strict = fields.face_policy, fields.strict
        result = await on_serving_runtime(
            request,
            runtime,
            lambda serving: _enroll_photos(
                serving, collection, name, uploads, policy, strict=strict
            ),
        )
    return EnrollResponse(
        collection=collection,
        subject=result.subject,
        faces=[
            EnrolledFace(
                face_id=face.record.face_id,
                image_sha256=face.record.image_sha256,
                bbox=face.record.bbox,
                det_score=face.record.det_score,
                created=face.created,
                quality=quality_out(face.quality),
            )
            for face in result.faces
        ],
        rejected=[
            RejectedImage(image=r.image, code=r.error.code, message=r.error.message)
            for r in result.rejected
        ],
        warnings=[
            EnrollWarning(
                code="matches_other_subject",
                image=match.image,
                subject=match.subject,
                similarity=match.similarity,
                face_id=match.face_id,
            )
            for match in result.matches_other_subjects
        ],
    )


async def _enroll_photos(
    runtime: Runtime,
    collection: str,
    name: str,
    uploads: list[tuple[str, bytes]],
    face_policy: FacePolicy,
    *,
    strict: bool,
) -> EnrollResult:
    service = runtime.service
    # Cheap refusals first (gallery and image headers, no inference), then one inference
    # turn per photo so other tenants' requests interleave with a long enrollment.
    await anyio.to_thread.run_sync(service.check_subject_name, collection, name)
    await anyio.to_thread.run_sync(service.check_request_pixels, [data for _, data in uploads])
    outcomes = [
        await run_inference(runtime, partial(service.enrollment_face, filename, data, face_policy))
        for filename, data in uploads
    ]
    return await anyio.to_thread.run_sync(
        partial(service.commit_enrollment, collection, name, outcomes, strict=strict)
    )


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    responses=error_responses(*ACCESS_CODES, *IMAGE_CODES),
    summary="Who is in this photo?",
    openapi_extra=request_body(IdentifyFields, single=IDENTIFY_IMAGES.single),
)
async def identify(
    request: Request, runtime: RuntimeDep, collection: AuthorizedCollection
) -> IdentifyResponse:
    """Every face in the photo with its closest subjects and its quality. `match` is the
    best candidate at or above the threshold, or null (unknown). One subject is never
    matched to two faces of the same photo. A photo without faces gives an empty `faces`
    list."""
    settings = runtime.settings
    body = await read_body(
        request, IDENTIFY_IMAGES, max_image_bytes=settings.max_image_bytes, max_images=1
    )
    fields = validate_fields(IdentifyFields, body)
    k = fields.top_k or settings.default_top_k
    if k > settings.max_top_k:
        raise InvalidRequest(f"top_k must be at most {settings.max_top_k}", field="top_k")
    if fields.threshold is not None and fields.target_fpir is not None:
        raise InvalidRequest(
            "send threshold or target_fpir, not both: a threshold is what a target derives",
            field="target_fpir",
        )
    data = require_images(body, "image")[0].data
    faces, used = await run_inference(
        runtime,
        lambda: runtime.service.identify(
            collection, data, top_k=k, threshold=fields.threshold, target_fpir=fields.target_fpir
        ),
    )
    return IdentifyResponse(
        collection=collection,
        model=model_info(runtime),
        threshold=used.threshold,
        target_fpir=used.target_fpir,
        gallery_size=used.gallery_size,
        threshold_source=used.source,
        faces=[_identified(face) for face in faces],
    )


@router.post(
    "/verify",
    response_model=VerifyResponse,
    responses=error_responses(*ACCESS_CODES, *IMAGE_CODES, "no_face", "subject_not_found"),
    summary="Are these the same person?",
    openapi_extra=_verify_body(),
)
async def verify(
    request: Request,
    runtime: RuntimeDep,
    caller: Caller,
    collection: CollectionParam = "default",
) -> VerifyResponse:
    """Either `image_a` + `image_b` (largest face of each), or `image` + `subject` (largest
    face against the subject's closest enrolled face, in `collection`). An error about a
    photo names its field (`details.field`)."""
    settings = runtime.settings
    body = await read_body(
        request, VERIFY_IMAGES, max_image_bytes=settings.max_image_bytes, max_images=1
    )
    fields = validate_fields(VerifyFields, body)
    image_a, image_b, image = body.one("image_a"), body.one("image_b"), body.one("image")
    if image_a is not None and image_b is not None and image is None and fields.subject is None:
        result = await run_inference(
            runtime,
            lambda: runtime.service.verify_images(image_a.data, image_b.data, fields.threshold),
        )
    elif image is not None and fields.subject is not None and image_a is None and image_b is None:
        require_collection(caller, collection)
        name = validate_subject(fields.subject)
        result = await run_inference(
            runtime,
            lambda: runtime.service.verify_subject(collection, image.data, name, fields.threshold),
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
    responses=error_responses("unauthorized", "rate_limited", *IMAGE_CODES),
    summary="Detect every face and return its embedding",
    dependencies=[Depends(authenticated)],
    openapi_extra=request_body(EmbedFields, single=EMBED_IMAGES.single),
)
async def embed(request: Request, runtime: RuntimeDep) -> EmbedResponse:
    """L2-normalised embeddings of every face (cosine similarity = dot product), with
    each face's quality."""
    body = await read_body(
        request, EMBED_IMAGES, max_image_bytes=runtime.settings.max_image_bytes, max_images=1
    )
    validate_fields(EmbedFields, body)
    data = require_images(body, "image")[0].data
    faces = await run_inference(runtime, lambda: runtime.service.embed(data))
    return EmbedResponse(
        model=model_info(runtime),
        faces=[
            EmbeddedFaceOut(
                **_detection_fields(analysed.face.detection),
                quality=quality_out(analysed.quality),
                embedding=[float(v) for v in analysed.face.embedding],
            )
            for analysed in faces
        ],
    )
