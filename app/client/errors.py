"""The one exception the client raises for an error answer of the service."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """An error answer: ``status`` (HTTP), ``code`` (stable, e.g. ``no_face``), ``message``,
    ``details``, ``retry_after`` (seconds, for 429/503) and the ``request_id`` to quote."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after
        self.request_id = request_id


def raise_for_error(response: httpx.Response) -> None:
    """Raise ``ApiError`` for a 4xx/5xx answer; bodies that are not the service's JSON
    (a proxy's HTML page) still give one, with code ``http_<status>``."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        body = {"code": f"http_{response.status_code}", "message": response.text[:200]}
    retry_after = response.headers.get("retry-after")
    raise ApiError(
        response.status_code,
        body["code"],
        str(body.get("message", "")),
        body.get("details") if isinstance(body.get("details"), dict) else None,
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        request_id=response.headers.get("x-request-id"),
    )
