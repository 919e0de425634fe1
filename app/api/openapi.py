"""The OpenAPI document, made to say what the server really sends.

* Every error response is the service's ``{"code", "message", "details"?}``, its ``code``
  constrained to the codes that route can answer with at that status (also listed in
  the response's description and in ``x-error-codes``). Routes declare theirs with
  ``error_responses("no_face", ...)``; FastAPI's default 422 (``{"detail": [...]}``,
  which this service never sends) becomes ``invalid_request`` everywhere, and error
  responses declared without codes get the one code their status has everywhere.
* Request bodies that FastAPI cannot describe (one route, two content types; two
  alternative field sets) are given by the routes through ``openapi_extra``.

``tests/api/test_openapi_truth.py`` drives every route into every documented status on
real server processes and checks each body against its documented schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.schemas import ErrorResponse

ERROR_SCHEMA_REF = "#/components/schemas/ErrorResponse"

# Every code a client can receive: its HTTP status and what it means.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "malformed_request": (400, "the body cannot be parsed (broken JSON or multipart framing)"),
    "undecodable_image": (400, "an empty, truncated or corrupt image"),
    "unauthorized": (401, "no X-API-Key, or a malformed, unknown or revoked one"),
    "forbidden": (403, "the key may not use this collection, or is not an admin key"),
    "subject_not_found": (404, "no such subject in the collection"),
    "face_not_found": (404, "no such face in the collection"),
    "crop_not_found": (404, "the face's aligned crop was not stored (crops off)"),
    "key_not_found": (404, "no such API key"),
    "unknown_not_found": (404, "no such unknown face of this key's stream (or it expired)"),
    "request_timeout": (408, "the body did not arrive within FACEREC_BODY_TIMEOUT_S"),
    "name_conflict": (409, "another subject of the collection has a look-alike name"),
    "matches_other_subject": (409, "strict enrollment: the face matches another subject"),
    "last_admin_key": (409, "revoking the only active admin key"),
    "auth_disabled": (409, "key management while FACEREC_AUTH=off"),
    "request_too_large": (413, "the body is over FACEREC_MAX_REQUEST_BYTES"),
    "image_too_large": (413, "an image over FACEREC_MAX_IMAGE_BYTES or _PIXELS"),
    "unsupported_media_type": (415, "not a JPEG, PNG, WebP or BMP image, or a wrong body type"),
    "invalid_request": (422, "missing, unknown or invalid fields or parameters"),
    "no_face": (422, "no face found"),
    "multiple_faces": (422, "several faces where one is needed (face_policy=single)"),
    "face_too_small": (422, "the face is under FACEREC_MIN_FACE_SIZE pixels"),
    "low_det_score": (422, "the detector's confidence is under FACEREC_MIN_DET_SCORE"),
    "low_quality": (422, "the face's quality is under FACEREC_MIN_QUALITY (see reasons)"),
    "rate_limited": (429, "the key's request budget is used up; see Retry-After"),
    "concurrency_limited": (429, "the key holds its share of the inference slots; see Retry-After"),
    "database_unavailable": (503, "the PostgreSQL gallery cannot be reached; see Retry-After"),
    "server_busy": (503, "every inference worker and queue slot is taken; see Retry-After"),
    # model swap (gallery generations)
    "model_swap_running": (409, "a model activation or rollback is already running"),
    "model_swap_unsupported": (409, "this gallery backend cannot swap models while serving"),
    "no_previous_generation": (409, "rollback: no earlier generation to return to"),
    "model_swap_rejected": (422, "the manifest is not a usable recognizer (see details.reason)"),
    "model_switched": (503, "the model switched during this write; nothing written, retry"),
}
# What an error response declared without codes can only mean, by status.
_SOLE_CODE_OF_STATUS = {
    400: "malformed_request",
    401: "unauthorized",
    403: "forbidden",
    413: "request_too_large",
    429: "rate_limited",
    503: "server_busy",
}
# Any route behind an API key, and any route with a body, can answer these.
ACCESS_CODES = ("unauthorized", "forbidden", "rate_limited")
IMAGE_CODES = (
    "malformed_request",
    "undecodable_image",
    "request_too_large",
    "image_too_large",
    "unsupported_media_type",
    "invalid_request",
    "request_timeout",
    "concurrency_limited",
    "server_busy",
)


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for these error codes, one entry per status listing its codes."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(ERROR_CODES[code][0], []).append(code)
    return {status: _error_response(found) for status, found in sorted(by_status.items())}


def _error_response(codes: list[str]) -> dict[str, Any]:
    lines = "; ".join(f"`{code}`: {ERROR_CODES[code][1]}" for code in codes)
    return {
        "description": lines,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": ERROR_SCHEMA_REF},
                        {"properties": {"code": {"enum": codes}}},
                    ]
                }
            }
        },
        "x-error-codes": codes,
    }


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at ``app.openapi_url`` (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = correct(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def correct(document: dict[str, Any]) -> dict[str, Any]:
    """Replace FastAPI's validation errors, give every error response its codes."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template=ERROR_SCHEMA_REF)
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            for status, response in list(responses.items()):
                if not status.isdigit() or int(status) < 400 or "x-error-codes" in response:
                    continue
                sole = (
                    "invalid_request" if status == "422" else _SOLE_CODE_OF_STATUS.get(int(status))
                )
                if sole is not None:
                    responses[status] = _error_response([sole])
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document
