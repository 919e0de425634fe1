"""SQLite page size for embedding rows: bytes per face, insert and full-read rates.

Run from the repository root::

    python -m bench.sqlite_pages --faces 100000

Builds the gallery's ``faces`` table (schema 1 + 2 migrations) with 512-d rows at
each page size, inserting in batches of 5,000 with ``executemany`` like
``add_faces_bulk``, then reads every embedding back in id order like a rebuild.
Rates are relative to 4 kB pages (SQLite's default) measured in the same run, the
page sizes taking turns batch by batch.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.gallery.embedded.migrations import MIGRATIONS
from app.storage.sqlite import connect
from bench.common import format_table, machine_description, print_machine

PAGE_SIZES = (4096, 8192, 16384, 32768)
BATCH = 5000
_INSERT = (
    "INSERT INTO faces (face_id, collection, subject, image_sha256, x1, y1, x2, y2, det_score, "
    "model_id, created_at, embedding) VALUES (?, 'c', ?, ?, 0, 0, 0, 0, 0, 'm', 't', ?)"
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--faces", type=int, default=100_000)
    args = parser.parse_args(argv)
    print_machine(machine_description())
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="facerec-pages-") as scratch:
        databases = {}
        for size in PAGE_SIZES:
            db = connect(Path(scratch) / f"{size}.sqlite3", foreign_keys=False, page_size=size)
            for migration in MIGRATIONS:
                for statement in migration:
                    db.execute(statement)
            databases[size] = db
        insert_s = dict.fromkeys(PAGE_SIZES, 0.0)
        for start in range(0, args.faces, BATCH):
            vectors = rng.standard_normal((BATCH, 512)).astype("<f4")
            rows = [
                (
                    uuid.uuid4().hex,
                    f"s{(start + i) // 4}",
                    hashlib.sha256(vector.tobytes()).hexdigest(),
                    vector.tobytes(),
                )
                for i, vector in enumerate(vectors)
            ]
            for size, db in databases.items():
                started = time.perf_counter()
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_INSERT, rows)
                db.execute("COMMIT")
                insert_s[size] += time.perf_counter() - started
        read_s = {}
        table = []
        for size, db in databases.items():
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            started = time.perf_counter()
            after = 0
            while rows_read := db.execute(
                "SELECT id, embedding FROM faces WHERE id > ? ORDER BY id LIMIT 8192", (after,)
            ).fetchall():
                after = rows_read[-1][0]
            read_s[size] = time.perf_counter() - started
            file_bytes = (Path(scratch) / f"{size}.sqlite3").stat().st_size
            table.append(
                [
                    size,
                    round(file_bytes / args.faces),
                    round(args.faces / insert_s[size]),
                    f"{insert_s[4096] / insert_s[size]:.2f}",
                    round(args.faces / read_s[size]),
                    f"{read_s[4096] / read_s[size]:.2f}" if 4096 in read_s else "1.00",
                ]
            )
            db.close()
    headers = ["page", "bytes/face", "insert rows/s", "x 4k", "read rows/s", "x 4k"]
    print(format_table(headers, table))
    print_machine(machine_description())


if __name__ == "__main__":
    main()
