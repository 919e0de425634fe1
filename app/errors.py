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


class RequestTimeout(FaceRecError):
    """The request body did not arrive within FACEREC_BODY_TIMEOUT_S."""

    code = "request_timeout"


class ConcurrencyLimited(FaceRecError):
    """The API key already has its share of the inference slots in use."""

    code = "concurrency_limited"


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


class NameConflict(FaceRecError):
    """A different subject whose name looks the same already exists in the collection."""

    code = "name_conflict"


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


# --- live streams -------------------------------------------------------------------


class UnknownNotFound(FaceRecError):
    """No unknown face of a stream by that id for this collection and key (or it expired)."""

    code = "unknown_not_found"


# --- database (the PostgreSQL backend, FACEREC_DATABASE_URL) ------------------------


class DatabaseUnavailable(GalleryUnavailable):
    """The database cannot be reached right now (down, restarting, overloaded, read-only).

    Requests fail at once with this (HTTP 503 and ``Retry-After``) instead of hanging;
    the service reconnects by itself when the database is back.
    """

    code = "database_unavailable"


class SchemaTooNew(GalleryUnavailable):
    """The database was migrated by a newer facerec than this one; upgrade facerec."""

    code = "schema_too_new"


# --- requests, enrollment and face crops (issue 14) --------------------------------------


class MalformedRequest(FaceRecError):
    """A body that cannot be parsed at all (broken JSON or multipart framing)."""

    code = "malformed_request"


class LowQuality(FaceRecError):
    """The face is too blurred, turned or uncertain to enroll (``details``: quality, reasons)."""

    code = "low_quality"


class MatchesOtherSubject(FaceRecError):
    """Strict enrollment: a new face already matches another subject above the threshold."""

    code = "matches_other_subject"


class CropNotFound(FaceRecError):
    """The face exists but its aligned crop was not stored (FACEREC_STORE_ALIGNED_CROPS off)."""

    code = "crop_not_found"


# --- inference engines (issue 9) -------------------------------------------------


class EngineUnavailable(ModelError):
    """The configured inference engine (FACEREC_ENGINE) is not installed."""

    code = "engine_unavailable"


# --- model swap (issue 13: gallery generations) --------------------------------------


class ModelSwapRunning(FaceRecError):
    """A model activation or rollback is already running; one job at a time."""

    code = "model_swap_running"


class ModelSwapUnsupported(FaceRecError):
    """This gallery cannot switch models while serving (a gallery without generations)."""

    code = "model_swap_unsupported"


class ModelSwapRejected(FaceRecError):
    """The recognizer manifest given for activation is not acceptable (``details.reason``)."""

    code = "model_swap_rejected"


class NoPreviousGeneration(FaceRecError):
    """Rollback with no earlier generation to return to."""

    code = "no_previous_generation"


class GenerationRetired(FaceRecError):
    """A write reached a gallery generation that stopped serving during the request
    (the model switched): nothing was written; send it again."""

    code = "model_switched"
