"""Values the gallery accepts and the conversions between them and SQLite rows."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from app.core.types import FaceRecord, FloatArray, SubjectSummary
from app.errors import InvalidRequest

# Tolerance on |embedding| - 1: float32 normalisation is exact to ~1e-7, so
# anything further off was never normalised (or belongs to a different metric).
UNIT_NORM_TOLERANCE = 1e-3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Stored byte order of embedding BLOBs, fixed so a gallery moves between machines.
EMBEDDING_DTYPE = np.dtype("<f4")

# Column list matching ``face_record_from_row`` (internal id first).
FACE_COLUMNS = (
    "id, face_id, collection, subject, image_sha256, x1, y1, x2, y2, det_score, model_id, "
    "created_at"
)


@dataclass(frozen=True, slots=True)
class NewFace:
    """One face to enroll: where it came from, its embedding and its aligned crop."""

    image_sha256: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in the source image
    det_score: float
    embedding: FloatArray = field(repr=False)  # (D,) float32, unit norm
    aligned_png: bytes | None = field(default=None, repr=False)  # 112x112 aligned face, PNG


def utc_now() -> datetime:
    return datetime.now(UTC)


def require_text(value: str, what: str) -> None:
    """Reject strings SQLite cannot store (lone surrogates are not valid UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{what} is not valid Unicode text (it contains a lone surrogate at position "
            f"{exc.start}); send it as well-formed UTF-8",
            field=what,
        ) from exc


def validate_embeddings(embeddings: FloatArray, dim: int, what: str) -> FloatArray:
    """Return ``embeddings`` as C-contiguous float32 (N, dim), checking they are unit norm."""
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1)
    if array.shape[0] and np.abs(norms - 1.0).max() > UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"{what} must be L2-normalised (norms found: {norms.min():.4f}..{norms.max():.4f})"
        )
    return array


def validate_new_face(face: NewFace, dim: int) -> None:
    require_text(face.image_sha256, "image_sha256")
    validate_embeddings(face.embedding.reshape(1, -1), dim, "embedding")
    if face.aligned_png is not None and not face.aligned_png.startswith(PNG_SIGNATURE):
        raise ValueError("aligned_png must hold PNG bytes (PNG signature missing)")


def encode_embedding(embedding: FloatArray) -> bytes:
    return np.asarray(embedding, dtype=EMBEDDING_DTYPE).tobytes()


def decode_embeddings(blobs: list[bytes], dim: int) -> FloatArray:
    """Stack embedding BLOBs into an (N, dim) float32 array, checking each size."""
    expected = dim * EMBEDDING_DTYPE.itemsize
    for blob in blobs:
        if len(blob) != expected:
            raise ValueError(f"embedding BLOB of {len(blob)} bytes, expected {expected}")
    flat = np.frombuffer(b"".join(blobs), dtype=EMBEDDING_DTYPE)
    return flat.astype(np.float32).reshape(len(blobs), dim)


def format_timestamp(moment: datetime) -> str:
    return moment.isoformat()


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def face_record_from_row(row: sqlite3.Row) -> FaceRecord:
    return FaceRecord(
        face_id=row["face_id"],
        collection=row["collection"],
        subject=row["subject"],
        image_sha256=row["image_sha256"],
        bbox=(row["x1"], row["y1"], row["x2"], row["y2"]),
        det_score=row["det_score"],
        model_id=row["model_id"],
        created_at=parse_timestamp(row["created_at"]),
    )


def subject_summary_from_row(row: sqlite3.Row) -> SubjectSummary:
    return SubjectSummary(
        collection=row["collection"],
        subject=row["name"],
        face_count=row["face_count"],
        created_at=parse_timestamp(row["created_at"]),
        updated_at=parse_timestamp(row["updated_at"]),
    )
