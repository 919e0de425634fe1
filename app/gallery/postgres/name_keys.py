"""Filling in the name keys of subjects written before keys were stored.

Migration 0003 adds ``subjects.name_key`` empty: the key is ``app.core.names.name_key``,
Python, which SQL cannot run. At every open, inside ``Database.setup_transaction``
(replicas take turns), the rows without a key get theirs in one statement; a row
whose key an older subject of its collection holds (or takes in the same batch) is
marked ``look_alike`` instead of failing the unique index. After the first open this
is one probe of an empty partial index.
"""

from __future__ import annotations

from typing import Any

import psycopg

from app.core.names import name_key

_STAGE = (
    "CREATE TEMPORARY TABLE facerec_name_keys (id bigint PRIMARY KEY, name_key text "
    'COLLATE "C" NOT NULL) ON COMMIT DROP'
)
# Rank 1 of a key within a collection takes it unless a keyed subject holds it already.
_ASSIGN = """
WITH ranked AS (
    SELECT s.id, k.name_key,
           row_number() OVER (PARTITION BY s.collection_id, k.name_key
                              ORDER BY s.created_at, s.id) AS rank
      FROM subjects s JOIN facerec_name_keys k ON k.id = s.id
)
UPDATE subjects s
   SET name_key = r.name_key,
       look_alike = r.rank > 1 OR EXISTS (
           SELECT 1 FROM subjects holder
            WHERE holder.collection_id = s.collection_id
              AND holder.name_key = r.name_key AND NOT holder.look_alike)
  FROM ranked r
 WHERE s.id = r.id
"""


def assign_name_keys(connection: psycopg.Connection[Any]) -> int:
    """Give every subject without a name key its key; how many there were."""
    rows = connection.execute("SELECT id, name FROM subjects WHERE name_key IS NULL").fetchall()
    if not rows:
        return 0
    connection.execute(_STAGE)
    with connection.cursor().copy("COPY facerec_name_keys (id, name_key) FROM STDIN") as copy:
        for subject_id, name in rows:
            copy.write_row((subject_id, name_key(name)))
    connection.execute(_ASSIGN)
    return len(rows)


def look_alike_counts(connection: psycopg.Connection[Any]) -> dict[str, int]:
    """Subjects kept from before the look-alike rule, per collection."""
    rows = connection.execute(
        "SELECT c.name, count(*) FROM subjects s JOIN collections c ON c.id = s.collection_id "
        "WHERE s.look_alike GROUP BY c.name"
    )
    return {name: int(count) for name, count in rows}
