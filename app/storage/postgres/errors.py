"""Driver exceptions as domain errors: a database that is away is a 503, not a 500.

Clients get a fixed message (no host names or driver text); the log gets the cause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from app.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

# Seconds a client is told to wait (Retry-After) before trying again.
RETRY_AFTER_S = 1
CLIENT_MESSAGE = "the gallery database is unavailable; retry shortly"

# Failures of the database or of the way to it, as opposed to bugs in a statement.
# OperationalError covers refused and broken connections, server shutdown,
# statement timeouts, too many connections and a full disk.
# ReadOnlySqlTransaction: connected to a standby (a failover in progress).
UNAVAILABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.TooManyRequests,
    pg_errors.ReadOnlySqlTransaction,
)


# During an outage every request fails: log the first failure, then one line (with
# the number of failures left out) at most this often.
LOG_INTERVAL_S = 10.0


class _OutageLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = -LOG_INTERVAL_S
        self._suppressed = 0

    def warn(self, where: str, cause: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < LOG_INTERVAL_S:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        text = str(cause).strip()
        detail = text.splitlines()[0] if text else ""
        logger.warning(
            "database unavailable during %s: %s: %s (%d similar failures not logged)",
            where,
            type(cause).__name__,
            detail,
            suppressed,
        )


_outages = _OutageLog()


def unavailable(cause: BaseException, where: str) -> DatabaseUnavailable:
    """The domain error for a driver failure; logs the cause (rate-limited)."""
    _outages.warn(where, cause)
    return DatabaseUnavailable(CLIENT_MESSAGE, retry_after_s=RETRY_AFTER_S)


@contextmanager
def translated(where: str) -> Iterator[None]:
    """Turn a database outage inside the block into ``DatabaseUnavailable``."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise unavailable(exc, where) from exc
