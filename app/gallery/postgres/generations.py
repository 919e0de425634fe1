"""Gallery generations of the PostgreSQL backend: rows in the database, one active pointer.

``gallery_generations`` (one row per generation ever created, numbers never reused),
``gallery_activations`` (every time one was made active) and ``gallery_active`` (the
pointer; no row: generation 0 serves), from migration 0005. Every change is one
transaction: ``create`` adds the row and the generation's empty table together,
``activate`` moves the pointer, notes the activation and (trigger) NOTIFYs
``facerec_generation`` together, so a crash leaves the old pointer or the new one.

One swap job at a time over all replicas: ``claim_job`` takes a session-scoped
advisory lock on a connection of its own, held until the job ends; a replica killed
mid-job loses its connection and with it the lock. A generation still ``copying``
while nobody holds that lock is an abandoned copy: ``discard_unfinished`` drops it
(at start-up and before each new job), so a restart always finds the active
generation complete and nothing half-made left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from app.core.generations import Activation, ActivePointer, Generation, retirable
from app.errors import InvalidRequest, ModelSwapRunning
from app.gallery.postgres.generation_tables import (
    SWAP_JOB_KEY,
    create_vectors_table,
    drop_vectors_table,
)
from app.storage.postgres.database import Database
from app.storage.postgres.errors import translated
from app.storage.sqlite import utc_now

__all__ = ["GENERATION_CHANNEL", "PostgresGenerations"]

logger = logging.getLogger(__name__)

GENERATION_CHANNEL = "facerec_generation"
Connection = psycopg.Connection[Any]
_GENERATION_COLUMNS = (
    "number, model_id, dim, manifest_path, manifest_sha256, created_at, created_by, state"
)


class PostgresGenerations:
    """The generations of the gallery in ``database`` (shared by every replica)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    # --- reads --------------------------------------------------------------------

    def active_number(self) -> int:
        pointer = self.active()
        return 0 if pointer is None else pointer.generation

    def active(self) -> ActivePointer | None:
        row = self._database.run(
            lambda connection: connection.execute(
                "SELECT generation, previous, activated_at, activated_by FROM gallery_active"
            ).fetchone(),
            what="read the active generation",
        )
        if row is None:
            return None
        return ActivePointer(
            generation=int(row[0]),
            previous=None if row[1] is None else int(row[1]),
            activated_at=row[2],
            activated_by=row[3],
        )

    def has(self, number: int) -> bool:
        return any(g.number == number for g in self.generations())

    def get(self, number: int) -> Generation:
        found = [g for g in self.generations() if g.number == number]
        if not found:
            raise InvalidRequest(f"no gallery generation {number}", generation=number)
        return found[0]

    def state(self, number: int) -> str | None:
        row = self._database.run(
            lambda connection: connection.execute(
                "SELECT state FROM gallery_generations WHERE number = %s", (number,)
            ).fetchone(),
            what="read a generation",
        )
        return None if row is None else str(row[0])

    def generations(self) -> list[Generation]:
        """Every generation whose embeddings are kept (not retired or discarded)."""
        return self._database.run(_kept_generations, what="list generations")

    # --- changes ------------------------------------------------------------------

    def record_origin(
        self, *, model_id: str, dim: int, manifest_path: str, manifest_sha256: str
    ) -> Generation:
        """Generation 0's row (the gallery as it was before the first swap), written once."""

        def write(connection: Connection) -> None:
            connection.execute(
                f"INSERT INTO gallery_generations ({_GENERATION_COLUMNS}) "
                "VALUES (0, %s, %s, %s, %s, %s, NULL, 'ready') ON CONFLICT DO NOTHING",
                (model_id, dim, manifest_path, manifest_sha256, utc_now()),
            )

        self._database.run(write, what="record generation 0")
        return self.get(0)

    def create(
        self,
        *,
        model_id: str,
        dim: int,
        manifest_path: str,
        manifest_sha256: str,
        created_by: str | None,
    ) -> Generation:
        """A new generation (state ``copying``) and its empty table, in one transaction."""

        def write(connection: Connection) -> int:
            connection.execute("LOCK TABLE gallery_generations IN EXCLUSIVE MODE")
            (taken,) = connection.execute(
                "SELECT coalesce(max(number), 0) FROM gallery_generations"
            ).fetchone() or (0,)
            number = int(taken) + 1
            connection.execute(
                f"INSERT INTO gallery_generations ({_GENERATION_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 'copying')",
                (number, model_id, dim, manifest_path, manifest_sha256, utc_now(), created_by),
            )
            create_vectors_table(connection, number, dim)
            return number

        return self.get(self._database.run(write, what="create a generation"))

    def activate(self, number: int, *, by: str | None) -> ActivePointer:
        """Point ``gallery_active`` at ``number`` (previous: the one active until now) and
        note the activation, in one transaction; its commit NOTIFYs every replica."""

        def write(connection: Connection) -> ActivePointer:
            now = utc_now()
            current_row = connection.execute(
                "SELECT generation FROM gallery_active FOR UPDATE"
            ).fetchone()
            current = 0 if current_row is None else int(current_row[0])
            previous = None if current == number else current
            connection.execute(
                "INSERT INTO gallery_active (only_row, generation, previous, activated_at, "
                "activated_by) VALUES (true, %s, %s, %s, %s) ON CONFLICT (only_row) DO UPDATE "
                "SET generation = EXCLUDED.generation, previous = EXCLUDED.previous, "
                "activated_at = EXCLUDED.activated_at, activated_by = EXCLUDED.activated_by",
                (number, previous, now, by),
            )
            connection.execute(
                "UPDATE gallery_generations SET state = 'ready' WHERE number = %s", (number,)
            )
            connection.execute(
                "INSERT INTO gallery_activations (generation, activated_at, activated_by) "
                "VALUES (%s, %s, %s)",
                (number, now, by),
            )
            return ActivePointer(
                generation=number, previous=previous, activated_at=now, activated_by=by
            )

        return self._database.run(write, what="activate a generation")

    def discard(self, number: int) -> None:
        """Drop a generation that is neither active nor the previous one (nor 0)."""
        self._drop(number, "discarded", "discard a generation")

    def discard_unfinished(self) -> list[int]:
        """Drop the generations of swaps that did not finish. Only while holding
        ``claim_job`` (else a live replica's copy would be taken for abandoned)."""
        gone = [
            int(number)
            for (number,) in self._database.run(
                lambda connection: connection.execute(
                    "SELECT number FROM gallery_generations WHERE state = 'copying' ORDER BY number"
                ).fetchall(),
                what="find unfinished generations",
            )
        ]
        for number in gone:
            self.discard(number)
        if gone:
            logger.warning("removed gallery generations %s: their swap did not finish", gone)
        return gone

    def retire_older(self) -> list[int]:
        """Drop the embeddings of generations >= 1 neither active nor previous."""
        gone = retirable(self.active(), self.generations())
        for number in gone:
            self._drop(number, "retired", "retire a generation")
        if gone:
            logger.info("retired gallery generations %s (their embeddings dropped)", gone)
        return gone

    def claim_job(self) -> Callable[[], None]:
        """Hold the database-wide swap-job lock until the returned release is called,
        after dropping the copies of jobs that died. ``ModelSwapRunning`` when another
        replica holds it."""
        release = self._lock_job()
        try:
            self.discard_unfinished()  # nobody else holds the lock: those are abandoned
        except BaseException:
            release()
            raise
        return release

    def discard_abandoned(self) -> list[int]:
        """At start-up: drop unfinished generations unless a live replica's job runs."""
        try:
            release = self._lock_job()
        except ModelSwapRunning:
            return []
        try:
            return self.discard_unfinished()
        finally:
            release()

    def _lock_job(self) -> Callable[[], None]:
        with translated("swap job lock"):
            connection = self._database.connect()
            try:
                row = connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (SWAP_JOB_KEY,)
                ).fetchone()
            except BaseException:
                connection.close()
                raise
        if row is None or not row[0]:
            connection.close()
            raise ModelSwapRunning(
                "a model swap is running on another replica of this gallery; wait for it",
                target_model_id=None,
            )

        def release() -> None:
            connection.close()  # ends the session: the lock goes with it

        return release

    # --- internals ------------------------------------------------------------------

    def _drop(self, number: int, state: str, what: str) -> None:
        if number == 0:
            raise InvalidRequest("generation 0's embeddings are kept")

        def write(connection: Connection) -> None:
            row = connection.execute(
                "SELECT generation, previous FROM gallery_active FOR UPDATE"
            ).fetchone()
            if row is not None and number in (int(row[0]), row[1]):
                raise InvalidRequest(f"generation {number} is active or the previous one; kept")
            connection.execute(
                "UPDATE gallery_generations SET state = %s WHERE number = %s", (state, number)
            )
            drop_vectors_table(connection, number)

        self._database.run(write, what=what)


def _kept_generations(connection: Connection) -> list[Generation]:
    activations: dict[int, list[Activation]] = {}
    for generation, at, by in connection.execute(
        "SELECT generation, activated_at, activated_by FROM gallery_activations "
        "ORDER BY activated_at"
    ):
        activations.setdefault(int(generation), []).append(Activation(at=at, by=by))
    rows = connection.execute(
        f"SELECT {_GENERATION_COLUMNS} FROM gallery_generations "
        "WHERE state IN ('copying', 'ready') ORDER BY number"
    ).fetchall()
    return [_generation(row, tuple(activations.get(int(row[0]), ()))) for row in rows]


def _generation(row: tuple[Any, ...], activations: tuple[Activation, ...]) -> Generation:
    created_at: datetime = row[5]
    return Generation(
        number=int(row[0]),
        model_id=str(row[1]),
        dim=int(row[2]),
        manifest_path=str(row[3]),
        manifest_sha256=str(row[4]),
        created_at=created_at,
        created_by=row[6],
        activations=activations,
    )
