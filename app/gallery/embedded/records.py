"""Conversions between gallery values and SQLite rows."""

from __future__ import annotations

import sqlite3

import numpy as np

from app.core.types import FaceRecord, FloatArray, SubjectSummary
from app.storage.sqlite import parse_timestamp

# Stored byte order of embedding BLOBs, fixed so a gallery moves between machines.
EMBEDDING_DTYPE = np.dtype("<f4")

# Column list matching ``face_record_from_row`` (internal id first).
FACE_COLUMNS = (
    "id, face_id, collection, subject, image_sha256, x1, y1, x2, y2, det_score, model_id, "
    "created_at"
)


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
