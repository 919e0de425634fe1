"""Structured logs: one JSON object per line, tagged with the current request id.

The request id lives in a context variable set by ``RequestContextMiddleware``;
anyio copies the context into worker threads, so inference logs carry it too.
Log calls pass ids, names, counts and timings, never image bytes or embeddings;
the JSON formatter only emits the message and a fixed set of fields.
"""

from __future__ import annotations

import json
import logging
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
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
        handler.addFilter(RequestIdFilter())
    if not ours:
        root.addHandler(handler)
