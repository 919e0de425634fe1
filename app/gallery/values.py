"""What every gallery backend accepts: text it can store, unit-norm embeddings, PNG crops."""

from __future__ import annotations

import numpy as np

from app.core.types import FloatArray, NewFace
from app.errors import InvalidRequest

# Tolerance on |embedding| - 1: float32 normalisation is exact to ~1e-7, so
# anything further off was never normalised (or belongs to a different metric).
UNIT_NORM_TOLERANCE = 1e-3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Names are keys of database indexes, and a PostgreSQL btree entry holds at most
# ~2.7 kB: 1 kB of UTF-8 leaves room, and is far beyond any real name (the HTTP API
# allows 64-character collections and 128-character subjects).
MAX_TEXT_BYTES = 1024


def require_text(value: str, what: str) -> None:
    """Reject strings a database cannot store: lone surrogates (not UTF-8), NUL, and
    more than ``MAX_TEXT_BYTES`` of UTF-8."""
    if "\x00" in value:
        raise InvalidRequest(f"{what} must not contain NUL characters", field=what)
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{what} is not valid Unicode text (it contains a lone surrogate at position "
            f"{exc.start}); send it as well-formed UTF-8",
            field=what,
        ) from exc
    if len(encoded) > MAX_TEXT_BYTES:
        raise InvalidRequest(
            f"{what} is {len(encoded)} bytes of UTF-8; at most {MAX_TEXT_BYTES} are allowed",
            field=what,
        )


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
