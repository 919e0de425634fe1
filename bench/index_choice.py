"""Which FAISS structure, from which gallery size: exact vs HNSW (and IVF for reference).

Run from the repository root::

    python -m bench.index_choice --json-out bench/results/index_choice.json

On face-like galleries (real mates + synthetic distractors, see ``distractors``) of
several sizes it measures, per structure:

* build: seconds and faces/s to add the whole gallery (IVF: training included);
* search: one query at a time on one thread (what one /identify does), p50 and p99
  in ms, every structure timed on the same query in turn (interleaved, so load on a
  shared machine hits all alike), and the ratio to exact search of the same size;
* quality: recall@1 of the real mates (the probe's own identity ranked first),
  as a share of exact search's recall@1; and agreement of the first face with
  exact search over every probe.

The gallery's ``IndexPolicy`` defaults (``app/gallery/embedded/vectors.py``) come
from this table: see docs/scale.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from app.config import Settings
from app.core.types import FloatArray
from bench.common import (
    REPO_ROOT,
    add_model_arguments,
    format_table,
    machine_description,
    model_overrides,
    print_machine,
    write_json,
)
from bench.probes import subject_of
from bench.scale_data import ScaleData, load_scale_data

Search = Callable[[FloatArray], tuple[FloatArray, NDArray[np.int64]]]
_faiss: Any = faiss  # its stubs lack the search-parameter classes


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    search: Search  # one query (1, dim) -> (similarities, ids) of the top 1
    build_s: float


def build_exact(vectors: FloatArray) -> Contender:
    started = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return Contender("exact", lambda query: index.search(query, 1), time.perf_counter() - started)


def build_hnsw(
    vectors: FloatArray, m: int, ef_construction: int, ef_searches: Sequence[int]
) -> list[Contender]:
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(vectors)
    seconds = time.perf_counter() - started

    def searcher(ef: int) -> Search:
        params = _faiss.SearchParametersHNSW(efSearch=ef)
        return lambda query: index.search(query, 1, params=params)

    return [
        Contender(f"hnsw M={m} efC={ef_construction} ef={ef}", searcher(ef), seconds)
        for ef in ef_searches
    ]


def build_ivf(vectors: FloatArray, nlist: int, nprobes: Sequence[int]) -> list[Contender]:
    started = time.perf_counter()
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: 64 * nlist]]
    index.train(sample)
    index.add(vectors)
    seconds = time.perf_counter() - started

    def searcher(nprobe: int) -> Search:
        params = _faiss.SearchParametersIVF(nprobe=nprobe)
        return lambda query: index.search(query, 1, params=params)

    return [
        Contender(f"ivf nlist={nlist} nprobe={nprobe}", searcher(nprobe), seconds)
        for nprobe in nprobes
    ]


def measure(
    contenders: Sequence[Contender], probes: FloatArray, passes: int
) -> tuple[dict[str, list[float]], dict[str, NDArray[np.int64]]]:
    """Latencies (ms) per contender, interleaved per query; top-1 ids of the last pass."""
    latencies: dict[str, list[float]] = {c.name: [] for c in contenders}
    tops = {c.name: np.empty(len(probes), dtype=np.int64) for c in contenders}
    for _ in range(passes):
        for row in range(len(probes)):
            query = probes[row : row + 1]
            for contender in contenders:
                started = time.perf_counter()
                _, ids = contender.search(query)
                latencies[contender.name].append((time.perf_counter() - started) * 1e3)
                tops[contender.name][row] = ids[0, 0]
    return latencies, tops


def evaluate_size(data: ScaleData, size: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    subjects, vectors = data.gallery(size)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    probes = np.ascontiguousarray(data.split.probes.embeddings, dtype=np.float32)
    truth = np.array([subject_of(identity) for identity in data.split.probes.identities])
    subject_array = np.array(subjects)
    faiss.omp_set_num_threads(args.build_threads)
    contenders = [build_exact(vectors)]
    for m, ef_construction in args.hnsw:
        contenders += build_hnsw(vectors, m, ef_construction, args.ef_search)
    if args.ivf:
        nlist = max(64, int(4 * np.sqrt(size)))
        contenders += build_ivf(vectors, nlist, args.nprobe)
    faiss.omp_set_num_threads(1)
    latencies, tops = measure(contenders, probes, args.passes)
    exact_top = tops["exact"]
    exact_recall = float(np.mean(subject_array[exact_top] == truth))
    exact_p50 = float(np.percentile(latencies["exact"], 50))
    rows = []
    for contender in contenders:
        top = tops[contender.name]
        recall = float(np.mean(subject_array[np.clip(top, 0, None)] == truth) * (top >= 0).mean())
        p50, p99 = np.percentile(latencies[contender.name], [50, 99])
        rows.append(
            {
                "size": size,
                "structure": contender.name,
                "build_s": round(contender.build_s, 2),
                "build_faces_per_s": round(size / contender.build_s) if contender.build_s else None,
                "search_p50_ms": round(float(p50), 3),
                "search_p99_ms": round(float(p99), 3),
                "p50_vs_exact": round(float(p50) / exact_p50, 3),
                "recall_at_1": round(recall, 4),
                "recall_vs_exact": round(recall / exact_recall, 4) if exact_recall else None,
                "top1_agreement": round(float(np.mean(top == exact_top)), 4),
            }
        )
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_model_arguments(parser)
    parser.add_argument("--sizes", default="10000,25000,50000,100000,200000")
    parser.add_argument(
        "--hnsw",
        default="16:40,32:40,32:80",
        type=lambda text: [tuple(int(v) for v in pair.split(":")) for pair in text.split(",")],
        help="M:efConstruction pairs",
    )
    parser.add_argument("--ef-search", default="16,32,64,128", type=_ints)
    parser.add_argument("--ivf", action="store_true", help="also IVF-Flat (nlist 4*sqrt(N))")
    parser.add_argument("--nprobe", default="8,16,32,64", type=_ints)
    parser.add_argument("--passes", type=int, default=2, help="searches of each probe")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "bench/results/scale")
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = _ints(args.sizes)
    machine = machine_description()
    print_machine(machine)
    settings = Settings(models_dir=args.models_dir, auth=False, log_level="WARNING").model_copy(
        update=model_overrides(args)
    )
    data = load_scale_data(
        settings, args.data_root, args.cache_dir, count=max(sizes), seed=args.seed
    )
    print(data.split.describe())
    rows: list[dict[str, Any]] = []
    for size in sizes:
        size_rows = evaluate_size(data, size, args)
        rows += size_rows
        print(f"\n{size} faces ({len(data.split.probes)} probes x {args.passes} passes)")
        print(
            format_table(
                [
                    *("structure", "build s", "faces/s", "p50 ms", "p99 ms", "p50/exact"),
                    *("recall@1", "vs exact", "top-1 agree"),
                ],
                [
                    [
                        row["structure"],
                        row["build_s"],
                        row["build_faces_per_s"],
                        row["search_p50_ms"],
                        row["search_p99_ms"],
                        row["p50_vs_exact"],
                        row["recall_at_1"],
                        row["recall_vs_exact"],
                        row["top1_agreement"],
                    ]
                    for row in size_rows
                ],
            )
        )
    end = machine_description()
    print_machine(end)
    if args.json_out:
        write_json(args.json_out, {"machine": [machine, end], "rows": rows})


if __name__ == "__main__":
    main()
