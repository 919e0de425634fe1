"""/identify on PostgreSQL galleries of growing size: latency, recall, import rate, size.

For each ``--sizes`` value N, a database of its own holds a gallery of N faces: the
first LFW photo of each of ``--people`` people (a real mate, enrolled under the
person's name) and N - people face-like distractors (bench/pgvector_types.py: drawn
from a Gaussian fitted to real embeddings, then normalised), imported through
``Gallery.add_faces_bulk`` as ``facerec gallery import-embeddings`` does. One real
``facerec serve`` runs per database; the probes are the people's *second* photos.

Measured per size, the sizes interleaved request by request (so load hits them
alike; ratios are against the smallest size, same run):

* ``/identify`` over HTTP, p50/p99, with 1 client and with 8;
* the gallery search alone (``Gallery.search`` on the probes' embeddings), p50/p99;
* recall@1 of the mates over HTTP, and agreement of the top hit with exact search;
* import rate, database and index size, replica start-up time.

    python -m tests.pgserver          # a throwaway server; prints FACEREC_DATABASE_URL
    python -m bench.postgres_scale --database-url postgresql://postgres@127.0.0.1:PORT/postgres
"""

from __future__ import annotations

import argparse
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from app.core.gallery import Gallery
from app.core.types import FloatArray, NewFace
from app.gallery import open_gallery
from app.gallery.postgres.schema import INDEX_NAME, index_ddl
from app.inference.catalog import resolve_manifest
from bench.common import (
    default_data_root,
    default_models_dir,
    format_table,
    machine_description,
    print_machine,
    write_json,
)
from bench.pgvector_types import CACHE, embed_lfw, face_like_distractors
from tests.serving import Server, server_environment

IMPORT_BATCH = 2000
RECOGNIZER = "w600k_mbf_int8"


@dataclass
class Size:
    faces: int
    url: str
    gallery: Gallery | None = None
    server: Server | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    http_ms: dict[int, list[float]] = field(default_factory=dict)
    search_ms: list[float] = field(default_factory=list)
    hits: list[str | None] = field(default_factory=list)


def probe_photos(data_root: Path, names: list[str]) -> list[Path]:
    """The second photo of each cached person (the first one is enrolled)."""
    return [sorted((data_root / "lfw" / "images" / name).glob("*.jpg"))[1] for name in names]


def enrolled_photos(data_root: Path, names: list[str]) -> list[Path]:
    return [sorted((data_root / "lfw" / "images" / name).glob("*.jpg"))[0] for name in names]


def build(
    size: Size,
    mates: FloatArray,
    names: list[str],
    photos: list[Path],
    real: FloatArray,
    *,
    rebuild_index: bool,
) -> None:
    """Import the gallery; ``rebuild_index``: without the HNSW index, then build it
    (the bulk-load recipe of docs/gallery.md), else into the live index."""
    model_id = resolve_manifest(RECOGNIZER, None)[0].model_id
    gallery = open_gallery(
        data_dir=Path("unused"), model_id=model_id, dim=mates.shape[1], database_url=size.url
    )
    size.gallery = gallery
    dim = mates.shape[1]
    if rebuild_index:
        with psycopg.connect(size.url, autocommit=True) as connection:
            connection.execute(f"DROP INDEX {INDEX_NAME}")
    faces: list[tuple[str, NewFace]] = [
        (name, NewFace(hashlib.sha256(photo.read_bytes()).hexdigest(), (0, 0, 1, 1), 0.9, mate))
        for name, photo, mate in zip(names, photos, mates, strict=True)
    ]
    distractors = face_like_distractors(real, size.faces - len(faces), seed=size.faces)
    faces += [
        (f"distractor-{n}", NewFace(f"distractor-{n:012d}", (0, 0, 1, 1), 0.9, vector))
        for n, vector in enumerate(distractors)
    ]
    started = time.perf_counter()
    for start in range(0, len(faces), IMPORT_BATCH):
        gallery.add_faces_bulk("bench", faces[start : start + IMPORT_BATCH])
        if start // IMPORT_BATCH % 10 == 0:
            rate = (start + IMPORT_BATCH) / (time.perf_counter() - started)
            print(f"  {size.faces}: {start + IMPORT_BATCH} imported ({rate:.0f}/s)", flush=True)
    seconds = time.perf_counter() - started
    size.stats["import_s"] = seconds
    size.stats["import_per_s"] = len(faces) / seconds
    size.stats["index_built_after_import"] = rebuild_index
    if rebuild_index:
        with psycopg.connect(size.url, autocommit=True) as connection:
            size.stats["index_build_s"] = build_index(connection, dim)
            print(f"  {size.faces}: index built in {size.stats['index_build_s']:.0f} s")
    with psycopg.connect(size.url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE faces")
        row = connection.execute(
            "SELECT pg_database_size(current_database()), pg_relation_size('faces_embedding_hnsw')"
        ).fetchone()
        assert row is not None
        size.stats["database_mb"] = row[0] / 2**20
        size.stats["index_mb"] = row[1] / 2**20


def holds(admin: psycopg.Connection[Any], name: str, url: str, faces: int) -> bool:
    """Whether database ``name`` exists with a complete, indexed gallery of ``faces``."""
    if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
        return False
    with psycopg.connect(url) as connection:
        count = connection.execute(
            "SELECT (SELECT face_count FROM collections WHERE name = 'bench'), "
            "(SELECT count(*) FROM pg_indexes WHERE indexname = %s)",
            (INDEX_NAME,),
        ).fetchone()
    return count is not None and count[0] == faces and count[1] == 1


def rebuild_index(url: str, dim: int) -> float:
    """Drop the gallery's HNSW index and build it again; seconds the build took."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP INDEX IF EXISTS {INDEX_NAME}")
        return build_index(connection, dim)


def build_index(connection: psycopg.Connection[Any], dim: int) -> float:
    connection.execute("SET maintenance_work_mem = '4GB'")  # the graph must fit
    connection.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    connection.execute(index_ddl(dim))
    return time.perf_counter() - started


def reopen(size: Size, dim: int) -> None:
    model_id = resolve_manifest(RECOGNIZER, None)[0].model_id
    size.gallery = open_gallery(
        data_dir=Path("unused"), model_id=model_id, dim=dim, database_url=size.url
    )
    with psycopg.connect(size.url) as connection:
        row = connection.execute(
            "SELECT pg_database_size(current_database()), pg_relation_size('faces_embedding_hnsw')"
        ).fetchone()
        assert row is not None
    size.stats.update(database_mb=row[0] / 2**20, index_mb=row[1] / 2**20, reused=True)


def start_server(size: Size, models_dir: Path, log_dir: Path) -> None:
    environment = server_environment(
        models_dir, log_dir / "unused", database_url=size.url, auth="off", log_level="WARNING"
    )
    started = time.perf_counter()
    size.server = Server(environment, log_dir / f"serve-{size.faces}.log")
    size.server.wait_ready()
    size.stats["startup_s"] = time.perf_counter() - started


def identify(client: httpx.Client, photo: bytes) -> tuple[str | None, float]:
    started = time.perf_counter()
    response = client.post(
        "/identify", params={"collection": "bench"}, files={"image": ("p.jpg", photo)}
    )
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    faces = response.json()["faces"]
    match = faces[0]["match"] if faces else None
    return (None if match is None else match["subject"]), elapsed


def measure_http(sizes: list[Size], photos: list[bytes], clients: int) -> None:
    """Each client sends every photo to every size in turn (interleaved)."""
    errors: list[BaseException] = []

    def client_loop(share: list[bytes]) -> None:
        try:
            http = {s.faces: s.server.client() for s in sizes if s.server is not None}
            for photo in share:
                for size in sizes:
                    subject, ms = identify(http[size.faces], photo)
                    size.http_ms.setdefault(clients, []).append(ms)
                    if clients == 1:
                        size.hits.append(subject)
            for connection in http.values():
                connection.close()
        except BaseException as error:
            errors.append(error)

    shares = [photos[n::clients] for n in range(clients)]
    threads = [threading.Thread(target=client_loop, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def measure_search(sizes: list[Size], probes: FloatArray, rounds: int) -> None:
    for _ in range(rounds):
        for probe in probes:
            for size in sizes:
                assert size.gallery is not None
                started = time.perf_counter()
                size.gallery.search("bench", probe[None, :], top_k=5)
                size.search_ms.append((time.perf_counter() - started) * 1000)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a database to CREATE DATABASE from")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--people", type=int, default=500, help="real mates, and probes")
    parser.add_argument("--search-rounds", type=int, default=2)
    parser.add_argument(
        "--rebuild-index-above",
        type=int,
        default=20_000,
        help="larger galleries are imported without the index, then indexed (timed)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep galleries a previous run built completely"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build the galleries, measure nothing"
    )
    parser.add_argument(
        "--reindex",
        action="store_true",
        help="with --reuse: drop and rebuild (timed) each reused gallery's HNSW index",
    )
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--logs", type=Path, default=Path("bench/results/postgres_scale_logs"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    description = machine_description()
    print_machine(description)
    data_root, models_dir = default_data_root(), default_models_dir()
    real = embed_lfw(data_root, models_dir, max(args.people, 1000))
    names = [str(name) for name in np.load(CACHE)["names"]][0 : 2 * args.people : 2]
    mates = real[0 : 2 * args.people : 2]
    probes = real[1 : 2 * args.people : 2]
    base = args.database_url.rsplit("/", 1)[0]
    sizes: list[Size] = []
    reused: set[int] = set()
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        for faces in (int(n) for n in args.sizes.split(",")):
            name = f"facerec_bench_{faces}"
            size = Size(faces, f"{base}/{name}")
            sizes.append(size)
            if args.reuse and holds(admin, name, size.url, faces):
                reused.add(faces)
                continue
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
    args.logs.mkdir(parents=True, exist_ok=True)
    try:
        for size in sizes:
            if size.faces in reused:
                if args.reindex:
                    size.stats["index_build_s"] = rebuild_index(size.url, mates.shape[1])
                reopen(size, mates.shape[1])
                print(f"{size.faces} faces: reusing the gallery of an earlier run", flush=True)
                continue
            build(
                size,
                mates,
                names,
                enrolled_photos(data_root, names),
                real,
                rebuild_index=size.faces > args.rebuild_index_above,
            )
            print(f"{size.faces} faces imported: {size.stats}", flush=True)
        if args.build_only:
            return
        for size in sizes:
            start_server(size, models_dir, args.logs)
        photos = [photo.read_bytes() for photo in probe_photos(data_root, names)]
        measure_search(sizes, probes, args.search_rounds)
        measure_http(sizes, photos, clients=1)
        measure_http(sizes, photos[: max(80, len(photos) // 4)], clients=8)
        exact_agreement = exact_top_agreement(sizes, probes, mates, names)
    finally:
        for size in sizes:
            if size.server is not None:
                size.server.stop()
            if size.gallery is not None:
                size.gallery.close()
    report(description, sizes, names, exact_agreement, args.json_out)


def exact_top_agreement(
    sizes: list[Size], probes: FloatArray, mates: FloatArray, names: list[str]
) -> dict[int, float]:
    """Share of probes whose top hit (search) is the exact search's top subject."""
    agreement = {}
    for size in sizes:
        assert size.gallery is not None
        exported = list(size.gallery.export_embeddings("bench", batch_size=20_000))
        vectors = np.concatenate([batch.embeddings for batch in exported])
        subjects = [subject for batch in exported for subject in batch.subjects]
        best = np.argmax(probes @ vectors.T, axis=1)
        found = size.gallery.search("bench", probes, top_k=1)
        agreement[size.faces] = float(
            np.mean([hits[0].subject == subjects[n] for hits, n in zip(found, best, strict=True)])
        )
    return agreement


def report(
    description: dict[str, Any],
    sizes: list[Size],
    names: list[str],
    exact_agreement: dict[int, float],
    json_out: Path | None,
) -> None:
    baseline = sizes[0]
    rows = []
    results = []
    for size in sizes:
        recall = float(np.mean([hit == name for hit, name in zip(size.hits, names, strict=True)]))
        figures = {
            "faces": size.faces,
            **size.stats,
            "identify_1_p50_ms": percentile(size.http_ms[1], 50),
            "identify_1_p99_ms": percentile(size.http_ms[1], 99),
            "identify_8_p50_ms": percentile(size.http_ms[8], 50),
            "identify_8_p99_ms": percentile(size.http_ms[8], 99),
            "search_p50_ms": percentile(size.search_ms, 50),
            "search_p99_ms": percentile(size.search_ms, 99),
            "recall_at_1": recall,
            "top1_agrees_with_exact": exact_agreement[size.faces],
        }
        results.append(figures)
        ratio = figures["identify_1_p99_ms"] / percentile(baseline.http_ms[1], 99)
        rows.append(
            [
                size.faces,
                f"{figures['import_per_s']:.0f}" if "import_per_s" in figures else "reused",
                f"{figures['index_build_s']:.0f}" if "index_build_s" in figures else "-",
                f"{figures['database_mb']:.0f}/{figures['index_mb']:.0f}",
                f"{figures['startup_s']:.1f}",
                f"{figures['search_p50_ms']:.1f}/{figures['search_p99_ms']:.1f}",
                f"{figures['identify_1_p50_ms']:.0f}/{figures['identify_1_p99_ms']:.0f}",
                f"{ratio:.2f}",
                f"{figures['identify_8_p50_ms']:.0f}/{figures['identify_8_p99_ms']:.0f}",
                f"{recall:.4f}",
                f"{figures['top1_agrees_with_exact']:.4f}",
            ]
        )
    headers = [
        "faces", "import/s", "index build s", "db/index MB", "start s", "search p50/p99 ms",
        "identify x1 p50/p99", "p99 vs smallest", "identify x8 p50/p99", "recall@1",
        "top1 = exact",
    ]  # fmt: skip
    print(format_table(headers, rows))
    if json_out:
        write_json(json_out, {"machine": description, "results": results})


if __name__ == "__main__":
    main()
