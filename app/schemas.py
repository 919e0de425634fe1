"""Wire models: what the HTTP API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

BBox = tuple[float, float, float, float]


class ErrorResponse(BaseModel):
    code: str = Field(description="stable machine-readable error code")
    message: str
    details: dict[str, object] | None = None


class EnrolledFace(BaseModel):
    face_id: str
    image_sha256: str
    bbox: BBox
    det_score: float
    created: bool = Field(description="false when this image was already enrolled (idempotent)")


class RejectedImage(BaseModel):
    image: str = Field(description="file name of the rejected upload")
    code: str
    message: str


class EnrollResponse(BaseModel):
    collection: str
    subject: str
    faces: list[EnrolledFace]
    rejected: list[RejectedImage]


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


class IdentifiedFaceOut(DetectedFace):
    candidates: list[Candidate] = Field(description="best first")
    match: Candidate | None = Field(description="best candidate at or above threshold, else null")


class ModelInfo(BaseModel):
    detector: str
    recognizer: str


class IdentifyResponse(BaseModel):
    collection: str
    model: ModelInfo
    threshold: float
    faces: list[IdentifiedFaceOut]


class VerifyResponse(BaseModel):
    similarity: float
    threshold: float
    match: bool
    model: ModelInfo


class EmbeddedFaceOut(DetectedFace):
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


class ReadyResponse(BaseModel):
    status: str
    detector: ModelReadiness
    recognizer: ModelReadiness
    threshold: float
    gallery_faces: int
    collections: dict[str, int]


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
