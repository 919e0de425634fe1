"""Wire models: what the HTTP API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

BBox = tuple[float, float, float, float]


class ErrorResponse(BaseModel):
    code: str = Field(description="stable machine-readable error code")
    message: str
    details: dict[str, object] | None = None


class PoseOut(BaseModel):
    yaw: float = Field(description="degrees, estimated from the landmarks; 0 = frontal")
    pitch: float = Field(description="degrees, estimated from the landmarks (rough)")
    roll: float = Field(description="degrees: the eye line's angle (alignment removes it)")


class QualityOut(BaseModel):
    score: float = Field(ge=0, le=1, description="product of the component scores; 1 = good")
    size: float = Field(description="shorter side of the face box, pixels")
    sharpness: float = Field(description="Laplacian variance of the aligned face")
    pose: PoseOut
    det_score: float
    reasons: list[
        Literal["small_face", "blurry", "head_turned", "head_tilted", "low_detector_score"]
    ] = Field(description="what lowers the score, machine-readable")


class EnrolledFace(BaseModel):
    face_id: str
    image_sha256: str
    bbox: BBox
    det_score: float
    created: bool = Field(description="false when this image was already enrolled (idempotent)")
    quality: QualityOut


class RejectedImage(BaseModel):
    image: str = Field(description="file name of the rejected upload")
    code: str
    message: str


class EnrollWarning(BaseModel):
    code: Literal["matches_other_subject"] = Field(
        description="matches_other_subject: this face already matches another subject at or "
        "above the threshold (send strict=true to refuse such enrollments with a 409)"
    )
    image: str = Field(description="file name (or JSON field) of the photo")
    subject: str = Field(description="the other subject")
    similarity: float
    face_id: str = Field(description="the other subject's closest face")


class EnrollResponse(BaseModel):
    collection: str
    subject: str
    faces: list[EnrolledFace]
    rejected: list[RejectedImage]
    warnings: list[EnrollWarning]


class Candidate(BaseModel):
    subject: str
    similarity: float
    face_id: str = Field(description="the subject's enrolled face closest to this one")


class DetectedFace(BaseModel):
    bbox: BBox = Field(description="x1, y1, x2, y2 in image pixels")
    det_score: float
    landmarks: list[tuple[float, float]] = Field(
        description="left eye, right eye, nose, left and right mouth corner (x, y)"
    )


class LookalikeOut(BaseModel):
    subject: str
    similarity: float = Field(description="of its closest face to one of the match's faces")


class IdentifiedFaceOut(DetectedFace):
    quality: QualityOut
    candidates: list[Candidate] = Field(description="best first")
    match: Candidate | None = Field(description="best candidate at or above threshold, else null")
    match_lookalikes: list[LookalikeOut] = Field(
        default_factory=list,
        description="other subjects of the collection whose enrolled faces are at or above "
        "the threshold to the matched subject's (look-alikes: the match may be either); from "
        "the collection's latest look-alike report (GET /collections/{c}/lookalikes), which "
        "the first match in a collection starts in the background and changes refresh at "
        "most every FACEREC_LOOKALIKE_REFRESH_S",
    )


class ModelInfo(BaseModel):
    detector: str
    recognizer: str


ThresholdSourceOut = Literal[
    "impostor_tail", "impostor_tail_extrapolated", "match_floor", "capped", "fixed", "request"
]


class IdentifyResponse(BaseModel):
    collection: str
    model: ModelInfo
    threshold: float = Field(description="similarity at or above which a candidate matches")
    target_fpir: float | None = Field(
        description="false positive identification rate the threshold was derived for "
        "(null: a fixed threshold)"
    )
    gallery_size: int = Field(description="faces in the collection the threshold was chosen for")
    threshold_source: ThresholdSourceOut = Field(
        description="impostor_tail: measured quantile of the recognizer's impostor scores; "
        "impostor_tail_extrapolated: its fitted tail beyond the measured quantiles; "
        "match_floor: the 1:1 match threshold (the derived one was lower); capped: no "
        "threshold holds the target at this size; fixed: the fixed threshold "
        "(FACEREC_MATCH_THRESHOLD, or a manifest without an impostor tail); request: the "
        "request's threshold"
    )
    faces: list[IdentifiedFaceOut]


class VerifyResponse(BaseModel):
    similarity: float
    threshold: float
    match: bool
    model: ModelInfo


class EmbeddedFaceOut(DetectedFace):
    quality: QualityOut
    embedding: list[float]


class EmbedResponse(BaseModel):
    model: ModelInfo
    faces: list[EmbeddedFaceOut]


class FaceOut(BaseModel):
    face_id: str
    image_sha256: str
    bbox: BBox
    det_score: float
    model_id: str
    created_at: datetime


class SubjectOut(BaseModel):
    subject: str
    face_count: int
    created_at: datetime
    updated_at: datetime


class SubjectDetail(SubjectOut):
    collection: str
    faces: list[FaceOut]


class SubjectPage(BaseModel):
    collection: str
    items: list[SubjectOut]
    total: int
    limit: int
    offset: int


class DeleteSubjectResponse(BaseModel):
    subject: str
    deleted_faces: int


class DeleteFaceResponse(BaseModel):
    face_id: str
    subject: str


class HealthResponse(BaseModel):
    status: str


class ModelReadiness(BaseModel):
    name: str
    model_id: str
    sha256: str
    providers: list[str] = Field(
        description="onnxruntime providers, or OpenVINO devices, actually in use"
    )
    engine: str = Field(description="inference engine running the model: onnxruntime or openvino")
    precision: str = Field(description="what the model computes in: f32, or bf16 (OpenVINO)")


class ReadyResponse(BaseModel):
    status: str
    detector: ModelReadiness
    recognizer: ModelReadiness
    threshold: float = Field(description="the 1:1 match threshold (verify; identify's floor)")
    target_fpir: float | None = Field(
        None, description="identify's default target FPIR (FACEREC_TARGET_FPIR)"
    )
    identify_thresholds: str | None = Field(
        None,
        description="how identify chooses its threshold per collection "
        "(GET /collections/{c}/settings shows a collection's)",
    )
    gallery_faces: int | None = Field(None, description="admin keys only (or auth off)")
    collections: dict[str, int] | None = Field(
        None, description="faces per collection; admin keys only (or auth off)"
    )
    generation: GenerationBrief | None = Field(None, description="the gallery generation serving")
    swap: SwapBrief | None = Field(None, description="the current or last model swap job")


# --- API keys ---------------------------------------------------------------------------

# A collection name (see app.api.deps) or "*" for every collection.
KEY_COLLECTION_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$"


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="who or what the key is for")
    collections: list[Annotated[str, Field(pattern=KEY_COLLECTION_PATTERN)]] = Field(
        default_factory=list,
        max_length=100,
        description="collections the key may use; '*' for all (ignored for admin keys)",
    )
    admin: bool = Field(False, description="admin keys manage keys and reach every collection")


class KeyOut(BaseModel):
    key_id: str
    name: str
    admin: bool
    collections: list[str]
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    api_key: str = Field(description="the secret (send as X-API-Key); shown only this once")


class KeyList(BaseModel):
    items: list[KeyOut]


# --- request fields of the image endpoints (multipart form fields or JSON values) -----
# The images themselves are described in app.api.recognition (files or base64 strings).


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollFields(_Fields):
    subject: str = Field(description="the person's name or id")
    face_policy: Literal["single", "largest"] = Field(
        "single", description="single: reject photos with several faces; largest: use the largest"
    )
    strict: bool = Field(False, description="refuse (409) faces that already match another subject")
    unknown_id: str | None = Field(
        None,
        max_length=64,
        description="instead of images: an unknown face of a live stream (its unknown_id), "
        "enrolled from the crops the server kept; only the key that opened the stream, in its "
        "collection",
    )


class IdentifyFields(_Fields):
    top_k: int | None = Field(None, ge=1, description="candidates per face")
    threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="similarity threshold; default: derived from the target FPIR",
    )
    target_fpir: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="false positive identification rate to derive the threshold for; "
        "default: the collection's, else FACEREC_TARGET_FPIR (not with threshold)",
    )


class VerifyFields(_Fields):
    subject: str | None = Field(None, description="enrolled subject (with image)")
    threshold: float | None = Field(
        None, ge=-1, le=1, description="similarity threshold; default from the model"
    )


class EmbedFields(_Fields):
    pass


# --- collections and crops ----------------------------------------------------------------


class CollectionOut(BaseModel):
    name: str
    faces: int = Field(description="enrolled faces")


class CollectionList(BaseModel):
    items: list[CollectionOut] = Field(
        description="the collections this key may use: named in its scope, or holding faces"
    )
    all_collections: bool = Field(
        description="the key may use any collection, including ones not created yet"
    )


# --- open-set identification: collection settings and look-alikes (issue 15) --------------


class CollectionSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_fpir: float | None = Field(
        description="the collection's target false positive identification rate; null: "
        "the service default (FACEREC_TARGET_FPIR)",
        gt=0,
        lt=1,
    )


class CollectionSettingsOut(BaseModel):
    collection: str
    target_fpir: float | None = Field(description="stored for the collection; null: default")
    default_target_fpir: float = Field(description="FACEREC_TARGET_FPIR")
    effective_target_fpir: float = Field(description="what identify uses when a request sets none")
    threshold: float = Field(description="the threshold identify applies now")
    gallery_size: int = Field(description="faces in the collection it was derived for")
    threshold_source: ThresholdSourceOut
    per_comparison_far: float | None = Field(
        description="false-accept rate per face compared that holds the target at this size"
    )
    method: str = Field(description="how thresholds are chosen by this service")


class LookalikePairOut(BaseModel):
    subject_a: str
    subject_b: str
    similarity: float = Field(description="of their two closest enrolled faces")
    face_a: str = Field(description="subject_a's face of the pair")
    face_b: str
    above_threshold: bool = Field(description="at or above the identification threshold now")


class LookalikeReportOut(BaseModel):
    collection: str
    threshold: float = Field(description="the identification threshold now (see settings)")
    faces_scanned: int
    complete: bool = Field(
        description="false: the collection holds more faces than FACEREC_LOOKALIKE_MAX_FACES; "
        "only that many were searched"
    )
    pairs: list[LookalikePairOut] = Field(description="most similar first")
    total: int = Field(description="pairs in the report (at most FACEREC_LOOKALIKE_KEEP)")
    limit: int
    offset: int


# --- model swap: gallery generations (POST /admin/models/...) ------------------------------


class GenerationBrief(BaseModel):
    number: int = Field(description="0: the gallery as created; each model swap adds one")
    model_id: str = Field(description="the recognizer whose embeddings it holds")


class SwapBrief(BaseModel):
    action: Literal["activate", "rollback"]
    state: Literal["loading", "copying", "switching", "done", "failed", "cancelled"]
    target_generation: int | None
    target_model_id: str
    faces_done: int = Field(description="faces re-embedded into the target so far")
    faces_total: int = Field(description="faces to re-embed (grows with enrollments meanwhile)")
    error_code: str | None = Field(None, description="why it failed (stable code)")


class SwapStatus(SwapBrief):
    faces_removed: int = Field(description="faces deleted from the target (deleted meanwhile)")
    faces_skipped: int = Field(description="faces without a stored crop: not re-embedded")
    started_at: datetime
    finished_at: datetime | None
    requested_by: str | None = Field(description="the admin key id (null with keys off)")


class ModelActivate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        min_length=1,
        max_length=4096,
        description="absolute path of a recognizer manifest JSON on the server",
    )
    force: bool = Field(
        False, description="activate even if the promotion gate decided against the candidate"
    )


class ActivationOut(BaseModel):
    at: datetime
    by: str | None = Field(description="the admin key id (null with keys off, or at start-up)")


class GenerationOut(BaseModel):
    number: int
    model_id: str
    dim: int
    manifest_path: str
    manifest_sha256: str = Field(description="of the manifest file, when it was activated")
    created_at: datetime
    created_by: str | None
    activations: list[ActivationOut]
    active: bool


class GenerationList(BaseModel):
    swap_supported: bool = Field(description="false for a gallery without generations: no swaps")
    active: int
    previous: int | None = Field(description="where POST /admin/models/rollback returns")
    generations: list[GenerationOut]
    swap: SwapStatus | None


ReadyResponse.model_rebuild()
