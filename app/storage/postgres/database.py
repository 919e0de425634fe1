"""One process's way to PostgreSQL: migrations at start-up, a pool, a listener.

* Start-up waits (up to ``startup_timeout_s``) for the database, then applies the
  migrations under the migration lock; a database it cannot use stops it there.
* Requests borrow pooled connections, each checked before use, so connections
  broken by a database restart are replaced instead of failing a request. Waiting
  for one is bounded (``timeout_s``; much shorter while the listener says the
  database is away), so an outage is a quick ``DatabaseUnavailable``, never a hang.
* Every statement has a time limit, TCP keepalives find dead peers, sessions run
  in UTC with ``synchronous_commit=on`` (a commit is durable when it returns).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types import TypeInfo
from psycopg_pool import ConnectionPool

from app.errors import DatabaseUnavailable
from app.storage.postgres.errors import UNAVAILABLE, translated
from app.storage.postgres.migrations import MIGRATION_LOCK_KEY, bundled_migrations, migrate
from app.storage.postgres.notifications import Notifications
from app.storage.postgres.options import DatabaseOptions
from app.storage.postgres.vectors import fetch_vector_type, register_vectors

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A deadlock or serialization failure rolled everything back: run the work again.
TRANSACTION_ATTEMPTS = 3
# Wait for a pooled connection while the listener has lost the database: long
# enough for a free connection, short enough that an outage answers at once.
WAIT_WHILE_AWAY_S = 0.25
# Pooled connections unused this long are closed (down to one).
MAX_IDLE_S = 300.0
STARTUP_RETRY_S = 1.0


class Database:
    """Open with ``Database.open``; share one per process between gallery and key store."""

    def __init__(self, url: str, options: DatabaseOptions) -> None:
        self.options = options
        self.where = describe(url)
        self._url = url
        self._parameters = connection_parameters(url, options)
        self._vector_type: TypeInfo | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self.notifications = Notifications(self.connect)

    @classmethod
    def open(cls, url: str, options: DatabaseOptions) -> Database:
        """Connect, migrate, and open the pool. Raises ``DatabaseUnavailable`` or a
        schema error (``SchemaTooNew``, ``GalleryUnavailable``) on failure."""
        database = cls(url, options)
        try:
            database._start()
        except BaseException:
            database.close()
            raise
        return database

    # --- requests -----------------------------------------------------------------

    def run(self, work: Callable[[psycopg.Connection[Any]], T], *, what: str) -> T:
        """``work`` in one transaction on a pooled connection: committed when this returns.

        A transaction the server rolled back (deadlock, serialization failure) is run
        again; an outage raises ``DatabaseUnavailable``.
        """
        pool = self._require_pool()
        with translated(what):
            for attempt in itertools.count(1):
                try:
                    with (
                        pool.connection(timeout=self._wait_s()) as connection,
                        connection.transaction(),
                    ):
                        return work(connection)
                except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
                    if attempt >= TRANSACTION_ATTEMPTS:
                        raise
                    logger.info("%s: transaction rolled back by the server, retrying", what)
        raise AssertionError("unreachable")  # pragma: no cover

    def connect(self, **overrides: Any) -> psycopg.Connection[Any]:
        """A new autocommit connection of its own (not pooled): listener, tools."""
        parameters = {**self._parameters, **overrides}
        connection = psycopg.connect(self._url, autocommit=True, **parameters)
        if self._vector_type is not None:
            register_vectors(connection, self._vector_type)
        return connection

    @contextmanager
    def setup_transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction holding the migration lock, without statement time limit:
        for start-up work that replicas must not do at the same time."""
        with (
            translated("start-up"),
            self.connect(**_setup_parameters(self.options)) as connection,
            connection.transaction(),
        ):
            connection.execute("SET LOCAL statement_timeout = 0")
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            yield connection

    def close(self) -> None:
        """Stop the listener and close every connection; safe to call twice."""
        self.notifications.close()
        if self._pool is not None:
            self._pool.close()

    # --- internals --------------------------------------------------------------------

    def _start(self) -> None:
        connection = self._connect_at_startup()
        with connection:
            connection.execute(
                "SELECT set_config('statement_timeout', '0', false), "
                "set_config('lock_timeout', %s, false)",
                (f"{int(self.options.startup_timeout_s * 1000)}ms",),
            )
            version = migrate(connection, bundled_migrations())
            self._vector_type = fetch_vector_type(connection)
        logger.info("database %s at schema version %d", self.where, version)
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self._url,
            kwargs={**self._parameters, "autocommit": False},
            min_size=1,
            max_size=self.options.pool_size,
            open=False,
            configure=self._configure,
            check=ConnectionPool.check_connection,
            timeout=self.options.timeout_s,
            max_idle=MAX_IDLE_S,
            # Give up on a connection attempt after this; the pool makes new attempts
            # when requests need connections, so it recovers whenever the database does.
            reconnect_timeout=max(10.0, self.options.startup_timeout_s),
            name="facerec",
        )
        self._pool = pool
        with translated("start-up"):
            pool.open(wait=True, timeout=self.options.startup_timeout_s)

    def _connect_at_startup(self) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + self.options.startup_timeout_s
        for attempt in itertools.count(1):
            try:
                return self.connect()
            except UNAVAILABLE as exc:
                if time.monotonic() + STARTUP_RETRY_S > deadline:
                    text = str(exc).strip()
                    raise DatabaseUnavailable(
                        f"cannot connect to PostgreSQL at {self.where} "
                        f"(tried {attempt} times in {self.options.startup_timeout_s:g} s): "
                        f"{text.splitlines()[0] if text else type(exc).__name__}",
                        database=self.where,
                    ) from exc
                if attempt == 1:
                    logger.warning("waiting for PostgreSQL at %s", self.where)
                time.sleep(STARTUP_RETRY_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def _configure(self, connection: psycopg.Connection[Any]) -> None:
        assert self._vector_type is not None  # fetched before the pool opens
        register_vectors(connection, self._vector_type)

    def _require_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None or self._pool.closed:
            raise RuntimeError("the database is closed")
        return self._pool

    def _wait_s(self) -> float:
        if self.notifications.live:
            return self.options.timeout_s
        return min(self.options.timeout_s, WAIT_WHILE_AWAY_S)


def connection_parameters(url: str, options: DatabaseOptions) -> dict[str, Any]:
    """libpq parameters facerec adds to the URL's own (which win where both set one)."""
    given = conninfo_to_dict(url)
    wanted: dict[str, Any] = {
        # libpq counts whole seconds and treats values below 2 as 2.
        "connect_timeout": max(2, math.ceil(options.timeout_s)),
        "application_name": options.application_name,
        # Find a peer that vanished (host down, network cut) instead of waiting forever.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    parameters = {name: value for name, value in wanted.items() if name not in given}
    settings = {
        "statement_timeout": f"{int(options.statement_timeout_s * 1000)}",
        "TimeZone": "UTC",
        "synchronous_commit": "on",
        # A transaction left open by a vanished client must not hold locks for long.
        "idle_in_transaction_session_timeout": "60000",
    }
    server_options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    own = given.get("options")
    parameters["options"] = f"{own} {server_options}" if own else server_options
    return parameters


def _setup_parameters(options: DatabaseOptions) -> dict[str, Any]:
    return {"connect_timeout": max(2, math.ceil(options.startup_timeout_s))}


def describe(url: str) -> str:
    """``host:port/database`` of a URL, without user or password (for messages and logs)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an invalid FACEREC_DATABASE_URL)"
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    port = parts.get("port") or "5432"
    return f"{host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"
