"""Domain errors with stable, machine-readable codes.

The core raises these; only the HTTP edge (``app.api.handlers``) knows which
status code each one maps to. The ``code`` strings are part of the public API:
never rename one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FaceRecError(Exception):
    """Base class of every error the service reports to a client."""

    code: ClassVar[str] = "facerec_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


# --- bad input: the image itself -------------------------------------------------


class InvalidImage(FaceRecError):
    """The bytes are not a decodable image (empty, truncated, corrupt)."""

    code = "undecodable_image"


class UnsupportedImageType(FaceRecError):
    """The bytes are an image, but of a format the service does not accept."""

    code = "unsupported_media_type"


class ImageTooLarge(FaceRecError):
    """Too many bytes or too many pixels (decompression bombs included)."""

    code = "image_too_large"


# --- bad input: the faces in it --------------------------------------------------


class NoFaceDetected(FaceRecError):
    code = "no_face"


class MultipleFaces(FaceRecError):
    code = "multiple_faces"


class FaceTooSmall(FaceRecError):
    code = "face_too_small"


class LowDetectionScore(FaceRecError):
    code = "low_det_score"


class InvalidRequest(FaceRecError):
    """A well-formed request whose values are not acceptable (names, ranges)."""

    code = "invalid_request"


# --- access and capacity (HTTP edge) ------------------------------------------------


class Unauthorized(FaceRecError):
    """No API key, or one that is malformed, unknown or revoked."""

    code = "unauthorized"


class Forbidden(FaceRecError):
    """A valid API key that is not allowed this collection or operation."""

    code = "forbidden"


class RateLimited(FaceRecError):
    """The API key used up its request budget; ``retry_after_s`` says when to come back."""

    code = "rate_limited"


class ServerBusy(FaceRecError):
    """Every inference worker and queue slot is taken; retry after ``retry_after_s``."""

    code = "server_busy"


class RequestTooLarge(FaceRecError):
    """The request body is larger than FACEREC_MAX_REQUEST_BYTES."""

    code = "request_too_large"


class KeyNotFound(FaceRecError):
    code = "key_not_found"


class LastAdminKey(FaceRecError):
    """Revoking this key would leave no active admin key (nobody could manage keys)."""

    code = "last_admin_key"


class AuthDisabled(FaceRecError):
    """Key management was called on a service running with FACEREC_AUTH=off."""

    code = "auth_disabled"


# --- gallery ------------------------------------------------------------------------


class SubjectNotFound(FaceRecError):
    code = "subject_not_found"


class FaceNotFound(FaceRecError):
    code = "face_not_found"


class GalleryModelMismatch(FaceRecError):
    """The gallery holds embeddings of a different recognizer than the one loaded."""

    code = "gallery_model_mismatch"


class GalleryUnavailable(FaceRecError):
    """The gallery on disk cannot be opened: newer schema, not a gallery, damaged, or in use."""

    code = "gallery_unavailable"


# --- models (start-up) --------------------------------------------------------------


class ModelError(FaceRecError):
    code = "model_error"


class ManifestInvalid(ModelError):
    code = "manifest_invalid"


class ModelNotFound(ModelError):
    code = "model_not_found"


class ModelChecksumMismatch(ModelError):
    code = "model_checksum_mismatch"


class ProviderUnavailable(ModelError):
    """A requested onnxruntime execution provider (CUDA, TensorRT, ...) cannot be used.

    Raised at start-up instead of quietly running on the CPU: the build lacks the
    provider, or it failed to initialise (no GPU visible, CUDA/cuDNN libraries missing).
    """

    code = "provider_unavailable"


# --- inference engines (issue 9) -------------------------------------------------


class EngineUnavailable(ModelError):
    """The configured inference engine (FACEREC_ENGINE) is not installed."""

    code = "engine_unavailable"
