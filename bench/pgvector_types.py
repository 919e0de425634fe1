"""Which pgvector column type and HNSW settings the PostgreSQL gallery uses, by measurement.

Compares, on one table of face-like embeddings in a real PostgreSQL + pgvector:

* ``vector``: HNSW ``vector_ip_ops`` on the float32 column;
* ``halfvec``: HNSW ``halfvec_ip_ops`` on ``embedding::halfvec(dim)`` (half the index
  size; exact similarities still come from the float32 column);
* ``exact``: no index, every row compared (what small collections get);

for index build time and size, recall@10 of the top 10 against exact search (numpy,
float64), top-1 agreement with exact, rank-1 of the real mate, and query latency
p50/p99. Within one index build the cases (kinds x ef_search) are interleaved probe
by probe, so machine load hits them alike; each ``--graphs`` setting is built and
measured in turn.

Embeddings: real ArcFace embeddings of LFW photos (the service's detector, aligner
and recognizer: two photos each of ``--people`` people), and distractors drawn from
a Gaussian fitted to them (their mean and full covariance, then L2-normalised): the
spread and correlations of real faces, unlike uniform random unit vectors. The
first photo of each person is in the table (a mate), the second is the probe.

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

from app.core.types import FloatArray
from app.inference.align import align_face
from app.inference.loader import build_detector, build_embedder, load_model
from app.inference.session import RuntimeOptions
from app.storage.postgres.vectors import fetch_vector_type, register_vectors
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
INDEXES = {
    "vector": "USING hnsw (embedding vector_ip_ops) WITH (m = {m}, ef_construction = {ef})",
    "halfvec": "USING hnsw ((embedding::halfvec({dim})) halfvec_ip_ops) "
    "WITH (m = {m}, ef_construction = {ef})",
}
ORDER_BY = {
    "vector": "embedding <#> %(q)b",
    "halfvec": "embedding::halfvec({dim}) <#> %(q)b::halfvec({dim})",
    # No index on this expression: a scan of every row, exact.
    "exact": "embedding::vector({dim}) <#> %(q)b",
}


def embed_lfw(data_root: Path, models_dir: Path, people: int) -> FloatArray:
    """Two embeddings each of LFW people with 2+ photos, (2 * people, 512), pairs adjacent."""
    if CACHE.is_file():
        cached = np.load(CACHE)
        if len(cached["embeddings"]) >= people * 2:
            embeddings: FloatArray = cached["embeddings"][: people * 2]
            return embeddings
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
    vectors: list[FloatArray] = []
    names: list[str] = []
    for folder in sorted(p for p in (data_root / "lfw" / "images").iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))[:2]
        faces = []
        for photo in photos if len(photos) == 2 else []:
            image = load_rgb(photo)
            detections = detector.detect(image)
            if detections:
                best = max(detections, key=lambda d: d.area)
                faces.append(align_face(image, best.landmarks))
        if len(faces) == 2:
            vectors.extend(embedder.embed(np.stack(faces)))
            names.extend([folder.name] * 2)
        if len(names) >= people * 2:
            break
    array = np.asarray(vectors, dtype=np.float32)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, embeddings=array, names=np.asarray(names))
    return array


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
    connection.execute("ALTER TABLE bench_faces ALTER COLUMN embedding SET STORAGE PLAIN")
    started = time.perf_counter()
    with connection.cursor().copy(
        "COPY bench_faces (id, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int8", "vector"])
        for row, vector in enumerate(vectors):
            copy.write_row((row, vector))
    connection.execute("VACUUM ANALYZE bench_faces")
    return time.perf_counter() - started


def build_index(
    connection: psycopg.Connection[Any], kind: str, dim: int, workers: int, graph: tuple[int, int]
) -> dict[str, float]:
    name = f"bench_faces_{kind}"
    connection.execute(f"DROP INDEX IF EXISTS {name}")
    connection.execute(f"SET max_parallel_maintenance_workers = {workers}")
    using = INDEXES[kind].format(dim=dim, m=graph[0], ef=graph[1])
    started = time.perf_counter()
    connection.execute(f"CREATE INDEX {name} ON bench_faces {using}")
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


def score(
    hits: list[list[int]], exact: np.ndarray[Any, Any], mates: Sequence[int]
) -> dict[str, float]:
    truth = [set(row[:QUERY_TOP_K].tolist()) for row in exact]
    return {
        "recall_at_10": float(
            np.mean(
                [len(set(ids) & top) / QUERY_TOP_K for ids, top in zip(hits, truth, strict=True)]
            )
        ),
        "top1_agreement": float(
            np.mean(
                [bool(ids) and ids[0] == int(row[0]) for ids, row in zip(hits, exact, strict=True)]
            )
        ),
        "mate_rank1": float(
            np.mean([bool(ids) and ids[0] == mate for ids, mate in zip(hits, mates, strict=True)])
        ),
    }


def measure_graph(
    connection: psycopg.Connection[Any],
    probes: FloatArray,
    exact: np.ndarray[Any, Any],
    mates: Sequence[int],
    *,
    dim: int,
    kinds: Sequence[str],
    ef_values: Sequence[int],
    workers: int,
    graph: tuple[int, int],
) -> list[dict[str, Any]]:
    built = {}
    for kind in kinds:
        if kind != "exact":
            built[kind] = build_index(connection, kind, dim, workers, graph)
            print(
                f"m={graph[0]} ef_construction={graph[1]} {kind}: built in "
                f"{built[kind]['build_s']:.1f} s, {built[kind]['index_mb']:.0f} MB",
                flush=True,
            )
    cases = [(kind, ef) for kind in kinds for ef in (ef_values if kind != "exact" else [0])]
    for probe in probes[:100]:  # warm the indexes into shared buffers / the page cache
        for kind in kinds:
            query(connection, kind, dim, probe)
    timings: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    found: dict[tuple[str, int], list[list[int]]] = {case: [] for case in cases}
    for probe in probes:  # every case for one probe before the next: load hits all alike
        for kind, ef in cases:
            if ef:
                connection.execute(f"SET hnsw.ef_search = {ef}")
            ids, seconds = query(connection, kind, dim, probe)
            timings[kind, ef].append(seconds)
            found[kind, ef].append(ids)
    for kind in built:
        connection.execute(f"DROP INDEX bench_faces_{kind}")
    results = []
    for kind, ef in cases:
        ms = np.asarray(timings[kind, ef]) * 1000
        results.append(
            {
                "kind": kind,
                "m": graph[0] if kind != "exact" else None,
                "ef_construction": graph[1] if kind != "exact" else None,
                "ef_search": ef or None,
                **built.get(kind, {"build_s": 0.0, "index_mb": 0.0}),
                **score(found[kind, ef], exact, mates),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
        )
    return results


def parse_graphs(text: str) -> list[tuple[int, int]]:
    graphs = []
    for item in text.split(","):
        m, ef = item.split(":")
        graphs.append((int(m), int(ef)))
    return graphs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--faces", type=int, default=100_000, help="rows in the table")
    parser.add_argument("--people", type=int, default=1000, help="LFW people (2 photos each)")
    parser.add_argument("--workers", type=int, default=0, help="parallel HNSW build workers")
    parser.add_argument("--kinds", default="vector,halfvec,exact")
    parser.add_argument(
        "--graphs", default="16:64", help="HNSW m:ef_construction settings, comma separated"
    )
    parser.add_argument("--ef", default="40,100,200", help="hnsw.ef_search values")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    description = machine_description()
    print_machine(description)
    real = embed_lfw(default_data_root(), default_models_dir(), args.people)
    enrolled, probes = real[0::2], real[1::2]  # first photo in the table, second one queries
    distractors = face_like_distractors(real, args.faces - len(enrolled), seed=10)
    vectors = np.concatenate([enrolled, distractors])
    mates = list(range(len(enrolled)))
    similarities = probes.astype(np.float64) @ vectors.astype(np.float64).T
    exact = np.argsort(-similarities, axis=1)
    mate_similarity = similarities[np.arange(len(probes)), mates]
    similarities[np.arange(len(probes)), mates] = -2
    print(
        f"{len(vectors)} faces ({len(enrolled)} real mates), {len(probes)} real probes; "
        f"probe-mate similarity median {np.median(mate_similarity):.3f}, best other face "
        f"median {np.median(similarities.max(axis=1)):.3f}; exact rank-1 of the mate "
        f"{np.mean(exact[:, 0] == np.asarray(mates)):.4f}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    with psycopg.connect(args.database_url, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vectors(connection, fetch_vector_type(connection))
        connection.execute("SET maintenance_work_mem = '2GB'")
        load_s = load_table(connection, vectors)
        print(f"COPY {len(vectors)} rows: {load_s:.1f} s", flush=True)
        kinds = args.kinds.split(",")
        for number, graph in enumerate(parse_graphs(args.graphs)):
            graph_kinds = kinds if number == 0 else [k for k in kinds if k != "exact"]
            results += measure_graph(
                connection,
                probes,
                exact,
                mates,
                dim=vectors.shape[1],
                kinds=graph_kinds,
                ef_values=[int(ef) for ef in args.ef.split(",")],
                workers=args.workers,
                graph=graph,
            )
        connection.execute("DROP TABLE bench_faces")
    headers = ["kind", "m", "ef_c", "ef_search", "build s", "index MB", "recall@10",
               "top1 agree", "mate rank1", "p50 ms", "p99 ms"]  # fmt: skip
    rows = [
        [
            r["kind"],
            r["m"] or "-",
            r["ef_construction"] or "-",
            r["ef_search"] or "-",
            f"{r['build_s']:.1f}",
            f"{r['index_mb']:.0f}",
            f"{r['recall_at_10']:.4f}",
            f"{r['top1_agreement']:.4f}",
            f"{r['mate_rank1']:.4f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
        ]
        for r in results
    ]
    print(format_table(headers, rows))
    if args.json_out:
        payload = {"machine": description, "faces": len(vectors), "results": results}
        write_json(args.json_out, payload)


if __name__ == "__main__":
    main()
