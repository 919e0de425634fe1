"""The one place where domain errors become HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import errors

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.FaceRecError], int] = {
    errors.InvalidImage: 400,
    errors.ImageTooLarge: 413,
    errors.UnsupportedImageType: 415,
    errors.NoFaceDetected: 422,
    errors.MultipleFaces: 422,
    errors.FaceTooSmall: 422,
    errors.LowDetectionScore: 422,
    errors.InvalidRequest: 422,
    errors.SubjectNotFound: 404,
    errors.FaceNotFound: 404,
    errors.GalleryModelMismatch: 409,
    errors.GalleryUnavailable: 503,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.RateLimited: 429,
    errors.ServerBusy: 503,
    errors.RequestTooLarge: 413,
    errors.KeyNotFound: 404,
    errors.LastAdminKey: 409,
    errors.AuthDisabled: 409,
    errors.RequestTimeout: 408,
    errors.ConcurrencyLimited: 429,
    errors.NameConflict: 409,
    errors.UnknownNotFound: 404,
    errors.DatabaseUnavailable: 503,
    # requests, enrollment and face crops
    errors.MalformedRequest: 400,
    errors.LowQuality: 422,
    errors.MatchesOtherSubject: 409,
    errors.CropNotFound: 404,
    # model swap (gallery generations)
    errors.ModelSwapRunning: 409,
    errors.ModelSwapUnsupported: 409,
    errors.ModelSwapRejected: 422,
    errors.NoPreviousGeneration: 409,
    errors.GenerationRetired: 503,
}
# Domain errors that are a client's answer even though their status is 5xx.
CLIENT_VISIBLE_5XX: tuple[type[errors.FaceRecError], ...] = (
    errors.ServerBusy,
    errors.DatabaseUnavailable,
    errors.GenerationRetired,
)


# Codes of errors raised by the framework itself. 400 is a body FastAPI could not
# parse at all (malformed multipart or JSON framing).
HTTP_ERROR_CODES = {400: "malformed_request", 404: "not_found", 405: "method_not_allowed"}


def status_for(error: errors.FaceRecError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[kind]
    return 500


def _json_safe(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def error_body(
    code: str, message: str, details: dict[str, object] | None = None
) -> dict[str, object]:
    body: dict[str, object] = {"code": code, "message": message}
    if details:
        body["details"] = _json_safe(details)
    return body


def note_error_code(request: Request, code: str) -> None:
    """Tell the request middleware which code answered (metrics, access log); first wins."""
    request.scope.setdefault("state", {}).setdefault("error_code", code)


def retry_headers(error: errors.FaceRecError) -> dict[str, str] | None:
    """``Retry-After`` for errors that say when to come back (``retry_after_s``)."""
    retry_after = error.details.get("retry_after_s")
    return None if retry_after is None else {"Retry-After": str(max(1, int(retry_after)))}


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.FaceRecError)
    status = status_for(exc)
    if status >= 500 and not isinstance(exc, CLIENT_VISIBLE_5XX):
        logger.error("internal domain error %s: %s", exc.code, exc.message)
        note_error_code(request, "internal_error")
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
    note_error_code(request, exc.code)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details),
        status_code=status,
        headers=retry_headers(exc),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        # A body that is not JSON at all is a framing error, as for broken multipart.
        note_error_code(request, "malformed_request")
        return JSONResponse(
            error_body("malformed_request", "the body is not valid JSON"), status_code=400
        )
    note_error_code(request, "invalid_request")
    problems = [
        {"field": ".".join(str(part) for part in error["loc"]), "problem": error["msg"]}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    return JSONResponse(
        error_body("invalid_request", f"invalid request: {summary}", {"errors": problems}),
        status_code=422,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    note_error_code(request, code)
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    note_error_code(request, "internal_error")
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


class InternalErrorMiddleware:
    """Answers an unexpected exception with the generic 500 and keeps the connection.

    Starlette's outermost error middleware answers too, but then re-raises, and
    uvicorn closes a keep-alive connection whose request raised: the client's next
    request on it would fail with a reset. Here the error is logged once and
    handled. An error after the response started can only be logged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            request = Request(scope)
            if started:
                logger.exception(
                    "unhandled error on %s %s after its response started",
                    request.method,
                    request.url.path,
                    exc_info=exc,
                )
                return
            response = await _unexpected_error(request, exc)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors, validation, HTTP errors and unexpected ones as JSON error bodies.

    Call before adding other middleware: ``InternalErrorMiddleware`` must sit inside
    them, so that the access log and metrics still see the 500."""
    app.add_exception_handler(errors.FaceRecError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(InternalErrorMiddleware)
