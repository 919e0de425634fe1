"""Structured logs: one JSON object per line, tagged with the current request id.

The request id lives in a context variable set by ``RequestContextMiddleware``;
anyio copies the context into worker threads, so inference logs carry it too.
Log calls pass ids, names, counts and timings, never image bytes or embeddings;
the JSON formatter only emits the message and a fixed set of fields.

Secrets never reach a line: every formatted line (message, exception text) goes
through ``redact``, which masks API key secrets (``frk_<id>_***``), ``api_key=``
style values and every URL query string; uvicorn's own WebSocket handshake lines
(which print the path with its query, before the app decided anything) are
dropped, and ``RequestContextMiddleware`` writes one line per WebSocket instead.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

request_id_var: ContextVar[str | None] = ContextVar("facerec_request_id", default=None)

# ``extra={...}`` keys that the JSON formatter copies into the object.
EXTRA_FIELDS = (
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "key_id",
    "code",
)


# An API key: keep its public id, mask the secret.
_TOKEN = re.compile(r"(frk_[0-9a-f]{16}_)[A-Za-z0-9_-]+")
# Any query string after a path (a WebSocket URL, a logged request line).
_QUERY = re.compile(r"(/[^\s?\"'\\]*)\?[^\s\"'\\]*")
# Key-like assignments: api_key=..., X-API-Key: ..., "secret": "...", token=...
_ASSIGNMENT = re.compile(
    r"(?i)((?:api[_-]?key|x-api-key|secret|token|password|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"'&,;}]+"
)
REDACTED = "***"
# uvicorn's WebSocket handshake lines start with this format string.
_UVICORN_WEBSOCKET_LINE = '%s - "WebSocket %s"'


def redact(text: str) -> str:
    """``text`` without API key secrets, key-like values or query strings."""
    text = _TOKEN.sub(rf"\g<1>{REDACTED}", text)
    text = _QUERY.sub(rf"\g<1>?{REDACTED}", text)
    return _ASSIGNMENT.sub(rf"\g<1>{REDACTED}", text)


class RedactingFormatter(logging.Formatter):
    """Wraps another formatter and redacts everything it produces."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class DropUvicornWebSocketLines(logging.Filter):
    """uvicorn logs each handshake with its full URL (query and key included) and says
    "[accepted]" before the app has checked anything; the app logs its own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("uvicorn")
            and isinstance(record.msg, str)
            and record.msg.startswith(_UVICORN_WEBSOCKET_LINE)
        )


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _FacerecHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so configuring twice replaces it."""


def configure_logging(level: str, log_format: Literal["json", "text"]) -> None:
    """Install one stderr handler on the root logger, unless someone else already did.

    Like ``logging.basicConfig``, an application (or pytest) that configured
    logging first keeps its handlers and its level. Calling it again replaces the
    format and level of the handler it installed.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _FacerecHandler)]
    if root.handlers and not ours:
        return
    root.setLevel(level.upper())
    handler = ours[0] if ours else _FacerecHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
        )
    handler.setFormatter(RedactingFormatter(formatter))
    for kind in (RequestIdFilter, DropUvicornWebSocketLines):
        if not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(kind())
    if not ours:
        root.addHandler(handler)
