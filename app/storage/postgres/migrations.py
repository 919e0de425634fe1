"""Versioned SQL migrations, applied in order at start-up, safe with many replicas.

Files ``migrations/NNNN_name.sql`` (numbered from 0001, no gaps) are applied in one
transaction holding a transaction-scoped advisory lock, so replicas starting together
queue up: the first applies what is missing, the others then find nothing to do.
``facerec_schema_migrations`` records each applied version with its file's sha256;
an applied file that changed since, or a database at a version this code does not
know (migrated by a newer facerec), is refused before anything is touched.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from app.errors import GalleryUnavailable, SchemaTooNew

# pg_advisory_xact_lock key: the ASCII of "facerec" (any constant other apps won't pick).
MIGRATION_LOCK_KEY = 0x66616365726563
MIGRATIONS_PACKAGE = "app.storage.postgres"
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS facerec_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The migrations shipped with this build, in version order."""
    folder = resources.files(MIGRATIONS_PACKAGE) / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(
                Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda migration: migration.version)
    expected = list(range(1, len(found) + 1))
    if [migration.version for migration in found] != expected:
        raise RuntimeError(f"migration files must be numbered 1..N without gaps: {found}")
    return found


def migrate(connection: psycopg.Connection[Any], migrations: list[Migration]) -> int:
    """Bring the database to the latest of ``migrations``; returns the schema version.

    ``connection`` must be idle (no transaction open); the work is one transaction.
    Raises ``SchemaTooNew`` for a database migrated by newer code, and
    ``GalleryUnavailable`` when an applied migration differs from its file.
    """
    latest = migrations[-1].version if migrations else 0
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        connection.execute(_CREATE_LEDGER)
        applied = {
            int(version): (name, sha256)
            for version, name, sha256 in connection.execute(
                "SELECT version, name, sha256 FROM facerec_schema_migrations ORDER BY version"
            )
        }
        newest = max(applied, default=0)
        if newest > latest:
            raise SchemaTooNew(
                f"the database schema is at version {newest}, but this facerec knows "
                f"versions up to {latest}: it was migrated by a newer facerec. Upgrade "
                "facerec (every replica), or restore a backup taken before the upgrade",
                schema_version=newest,
                supported_version=latest,
            )
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded is None:
                connection.execute(migration.sql.encode("utf-8"))
                connection.execute(
                    "INSERT INTO facerec_schema_migrations (version, name, sha256) "
                    "VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.sha256),
                )
            elif recorded[1] != migration.sha256:
                raise GalleryUnavailable(
                    f"migration {migration.version:04d}_{recorded[0]} applied to this "
                    "database differs from the one in this build (its file was edited "
                    "after release); the schema cannot be trusted",
                    schema_version=migration.version,
                )
    return latest
