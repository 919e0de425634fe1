"""Which pgvector column type and HNSW settings the PostgreSQL gallery uses, by measurement.

Compares, on one table of face-like embeddings in a real PostgreSQL + pgvector:

* ``vector``: float32 column, HNSW ``vector_ip_ops`` on it;
* ``halfvec``: float32 column, HNSW ``halfvec_ip_ops`` on ``embedding::halfvec(dim)``
  (half the index size; exact similarities still come from the float32 column);

for index build time and size, recall@10 of the HNSW top 10 against exact search
(numpy, float64), top-1 agreement, and query latency p50/p99 (the two kinds of
queries interleaved, so machine load hits both alike), at several ``hnsw.ef_search``.

Embeddings: real ArcFace embeddings of LFW photos (the service's detector, aligner
and recognizer), and distractors drawn from a Gaussian fitted to them (their mean
and full covariance, then L2-normalised): same spread and correlations as real
faces, unlike uniform random unit vectors. Probes are real embeddings of *other*
photos of people whose first photo is in the table (mates), so recall is measured
where it matters: finding a real mate among distractors.

    python -m bench.pgvector_types --database-url postgresql://... --faces 100000

Start a throwaway server with ``python -m tests.pgserver``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from app.core.types import FloatArray
from app.inference.align import align_face
from app.inference.loader import build_detector, build_embedder, load_model
from app.inference.session import RuntimeOptions
from bench.common import (
    REPO_ROOT,
    default_data_root,
    default_models_dir,
    format_table,
    load_rgb,
    machine_description,
    print_machine,
    write_json,
)

CACHE = REPO_ROOT / "bench" / "results" / "lfw_embeddings.npz"
QUERY_TOP_K = 10
EF_SEARCH = (40, 100, 200)


def embed_lfw(data_root: Path, models_dir: Path, people: int) -> tuple[FloatArray, list[str]]:
    """Embeddings of the first photos of LFW people with 2+ photos (cached in bench/results)."""
    if CACHE.is_file():
        cached = np.load(CACHE)
        if len(cached["names"]) >= people * 2:
            return cached["embeddings"], [str(name) for name in cached["names"]]
    options = RuntimeOptions()
    detector = build_detector(
        load_model(
            "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=options
        )
    )
    embedder = build_embedder(
        load_model(
            "w600k_mbf_int8", "recognizer", models_dir=models_dir, catalog_dir=None, options=options
        )
    )
    folders = sorted(p for p in (data_root / "lfw" / "images").iterdir() if p.is_dir())
    vectors: list[FloatArray] = []
    names: list[str] = []
    for folder in folders:
        photos = sorted(folder.glob("*.jpg"))[:2]
        if len(photos) < 2:
            continue
        faces = []
        for photo in photos:
            image = load_rgb(photo)
            detections = detector.detect(image)
            if not detections:
                break
            best = max(detections, key=lambda d: d.area)
            faces.append(align_face(image, best.landmarks))
        if len(faces) < 2:
            continue
        embeddings = embedder.embed(np.stack(faces))
        vectors.extend(embeddings)
        names.extend([folder.name, folder.name])
        if len(names) >= people * 2:
            break
    array = np.asarray(vectors, dtype=np.float32)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, embeddings=array, names=np.asarray(names))
    return array, names


def face_like_distractors(real: FloatArray, count: int, seed: int) -> FloatArray:
    """Draws from N(mean, covariance) of the real embeddings, L2-normalised."""
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0, dtype=np.float64)
    covariance = np.cov(real, rowvar=False)
    draws = rng.multivariate_normal(mean, covariance, size=count, method="eigh")
    draws /= np.linalg.norm(draws, axis=1, keepdims=True)
    return draws.astype(np.float32)


def load_table(connection: psycopg.Connection[Any], vectors: FloatArray) -> float:
    dim = vectors.shape[1]
    connection.execute("DROP TABLE IF EXISTS bench_faces")
    connection.execute(f"CREATE TABLE bench_faces (id bigint PRIMARY KEY, embedding vector({dim}))")
    started = time.perf_counter()
    with connection.cursor().copy(
        "COPY bench_faces (id, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int8", "vector"])
        for row, vector in enumerate(vectors):
            copy.write_row((row, vector))
    connection.execute("VACUUM ANALYZE bench_faces")
    return time.perf_counter() - started


INDEXES = {
    "vector": "USING hnsw (embedding vector_ip_ops) WITH (m = {m}, ef_construction = {ef})",
    "halfvec": "USING hnsw ((embedding::halfvec({dim})) halfvec_ip_ops) "
    "WITH (m = {m}, ef_construction = {ef})",
}
ORDER_BY = {
    "vector": "embedding <#> %(q)s",
    "halfvec": "embedding::halfvec({dim}) <#> %(q)s::halfvec({dim})",
}


def build_index(
    connection: psycopg.Connection[Any], kind: str, dim: int, workers: int, graph: tuple[int, int]
) -> dict[str, float]:
    name = f"bench_faces_{kind}"
    connection.execute(f"DROP INDEX IF EXISTS {name}")
    connection.execute(f"SET max_parallel_maintenance_workers = {workers}")
    started = time.perf_counter()
    connection.execute(
        f"CREATE INDEX {name} ON bench_faces {INDEXES[kind].format(dim=dim, m=graph[0], ef=graph[1])}"
    )
    seconds = time.perf_counter() - started
    size = connection.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()
    assert size is not None
    return {"build_s": seconds, "index_mb": size[0] / 2**20}


def query(
    connection: psycopg.Connection[Any], kind: str, dim: int, probe: FloatArray
) -> tuple[list[int], float]:
    order = ORDER_BY[kind].format(dim=dim)
    sql = f"SELECT id FROM bench_faces ORDER BY {order} LIMIT {QUERY_TOP_K}"
    started = time.perf_counter()
    rows = connection.execute(sql, {"q": probe}).fetchall()
    return [row[0] for row in rows], time.perf_counter() - started


def measure(
    connection: psycopg.Connection[Any],
    vectors: FloatArray,
    probes: FloatArray,
    mates: Sequence[int],
    kinds: Sequence[str],
    workers: int,
    graph: tuple[int, int],
) -> list[dict[str, Any]]:
    dim = vectors.shape[1]
    exact = np.argsort(-(probes.astype(np.float64) @ vectors.astype(np.float64).T), axis=1)
    exact_top = [set(row[:QUERY_TOP_K].tolist()) for row in exact]
    built = {}
    for kind in kinds:  # one build at a time: each takes the machine
        built[kind] = build_index(connection, kind, dim, workers, graph)
        print(
            f"{kind}: HNSW built in {built[kind]['build_s']:.1f} s, "
            f"{built[kind]['index_mb']:.0f} MB",
            flush=True,
        )
    plan = connection.execute(
        f"EXPLAIN SELECT id FROM bench_faces ORDER BY "
        f"{ORDER_BY[kinds[-1]].format(dim=dim)} LIMIT 10",
        {"q": probes[0]},
    ).fetchall()
    print("plan:", " / ".join(row[0].strip()[:60] for row in plan[:2]))
    cases = [(kind, ef) for kind in kinds for ef in EF_SEARCH]
    for _ in range(2):  # warm every index into shared buffers / the page cache
        for probe in probes[:100]:
            for kind in kinds:
                query(connection, kind, dim, probe)
    timings: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    found: dict[tuple[str, int], list[list[int]]] = {case: [] for case in cases}
    for probe in probes:  # every case for one probe before the next: load hits all alike
        for kind, ef in cases:
            connection.execute(f"SET hnsw.ef_search = {ef}")
            ids, seconds = query(connection, kind, dim, probe)
            timings[kind, ef].append(seconds)
            found[kind, ef].append(ids)
    exact_mate = float(
        np.mean([int(row[0]) == mate for row, mate in zip(exact, mates, strict=True)])
    )
    results: list[dict[str, Any]] = []
    for kind, ef in cases:
        hits = found[kind, ef]
        recall = np.mean(
            [
                len(set(ids) & truth) / QUERY_TOP_K
                for ids, truth in zip(hits, exact_top, strict=True)
            ]
        )
        top1 = np.mean(
            [bool(ids) and ids[0] == int(row[0]) for ids, row in zip(hits, exact, strict=True)]
        )
        mate_rank1 = np.mean(
            [bool(ids) and ids[0] == mate for ids, mate in zip(hits, mates, strict=True)]
        )
        ms = np.asarray(timings[kind, ef]) * 1000
        results.append(
            {
                "kind": kind,
                "ef_search": ef,
                **built[kind],
                "recall_at_10": float(recall),
                "top1_agreement": float(top1),
                "mate_rank1": float(mate_rank1),
                "mate_rank1_exact": exact_mate,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
        )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--faces", type=int, default=100_000, help="rows in the table")
    parser.add_argument("--people", type=int, default=1000, help="LFW people (2 photos each)")
    parser.add_argument("--workers", type=int, default=0, help="parallel HNSW build workers")
    parser.add_argument("--kinds", default="vector,halfvec")
    parser.add_argument("--m", type=int, default=16, help="HNSW m (pgvector default 16)")
    parser.add_argument(
        "--ef-construction", type=int, default=64, help="HNSW ef_construction (default 64)"
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    description = machine_description()
    print_machine(description)
    real, _names = embed_lfw(default_data_root(), default_models_dir(), args.people)
    enrolled, probes = real[0::2], real[1::2]  # first photo in the table, second one queries
    distractors = face_like_distractors(real, args.faces - len(enrolled), seed=10)
    vectors = np.concatenate([enrolled, distractors])
    mates = list(range(len(enrolled)))
    print(
        f"{len(vectors)} faces ({len(enrolled)} real mates), {len(probes)} real probes", flush=True
    )
    with psycopg.connect(args.database_url, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(connection)
        connection.execute("SET maintenance_work_mem = '2GB'")
        load_s = load_table(connection, vectors)
        print(f"COPY {len(vectors)} rows: {load_s:.1f} s", flush=True)
        results = measure(
            connection,
            vectors,
            probes,
            mates,
            args.kinds.split(","),
            args.workers,
            (args.m, args.ef_construction),
        )
        connection.execute("DROP TABLE bench_faces")
    headers = [
        "kind",
        "ef_search",
        "build s",
        "index MB",
        "recall@10",
        "top1 agree",
        "mate rank1",
        "(exact)",
        "p50 ms",
        "p99 ms",
    ]
    rows = [
        [
            r["kind"],
            r["ef_search"],
            f"{r['build_s']:.1f}",
            f"{r['index_mb']:.0f}",
            f"{r['recall_at_10']:.4f}",
            f"{r['top1_agreement']:.4f}",
            f"{r['mate_rank1']:.4f}",
            f"{r['mate_rank1_exact']:.4f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
        ]
        for r in results
    ]
    print(format_table(headers, rows))
    if args.json_out:
        write_json(
            args.json_out, {"machine": description, "faces": len(vectors), "results": results}
        )


if __name__ == "__main__":
    main()
