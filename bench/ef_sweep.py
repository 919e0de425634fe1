"""HNSW search effort on a kept gallery: recall and search time at several efSearch values.

Run from the repository root on a gallery a ``bench.scale --keep`` run left::

    python -m bench.scale --sizes 10000,100000,1000000 --keep ...
    python -m bench.ef_sweep --gallery bench/results/scale/work/gallery-1000000 \\
        --ef 256,384,512,768,1024

The gallery's index snapshot is read once; every efSearch value searches the *same*
FAISS graph through the gallery's own ``CollectionIndex.search`` (best face per
subject, tombstone bitmap, retries), each with a policy fixing that efSearch, and
exact search goes through the same code with every neighbour list computed exactly.
Nothing is rebuilt, so one million-face import serves the whole sweep.

Printed per efSearch: recall@1 of every probe's mate (its own identity first) as a
share of exact search's, agreement of the top subject with exact search, and the
search time of one query at a time on one thread (what one /identify asks of the
gallery), p50/p99 in ms, every value timed on the same query in turn. The shipped
rule (``IndexPolicy.ef_search_for``) is printed next to the table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from app.config import Settings
from app.gallery.embedded.index import CollectionIndex
from app.gallery.embedded.snapshot import SNAPSHOT_DIRNAME, read_indexes, read_manifest
from app.gallery.embedded.vectors import DEFAULT_POLICY, IndexPolicy
from bench import common
from bench.probes import split_probe_set, subject_of
from bench.real_faces import load_real_faces
from bench.scale import COLLECTION

TOP_K = 5  # what bench.scale asks /identify for


def fixed_ef(ef: int) -> IndexPolicy:
    """The default policy with efSearch fixed at ``ef`` whatever the size."""
    return IndexPolicy(hnsw_ef_search=ef, hnsw_ef_search_max=ef)


EXACT = IndexPolicy(max_ann_neighbours=0)  # every neighbour list computed exactly


def load_collection(gallery_dir: Path, *, model_id: str, dim: int) -> CollectionIndex:
    directory = gallery_dir / SNAPSHOT_DIRNAME
    manifest = read_manifest(directory, model_id=model_id, dim=dim)
    if manifest is None:
        raise SystemExit(f"no index snapshot in {directory}")
    return read_indexes(directory, manifest, policy=DEFAULT_POLICY)[COLLECTION]


def with_policy(index: CollectionIndex, policy: IndexPolicy) -> CollectionIndex:
    """The same FAISS structure and maps (shared, not copied) under another policy."""
    return CollectionIndex.from_state(index.state(), dim=index.dim, policy=policy)


def top_subjects(index: CollectionIndex, queries: np.ndarray[Any, Any]) -> list[str]:
    return [hits[0].subject if hits else "" for hits in index.search(queries, TOP_K)]


def share_equal(found: Sequence[str], expected: Sequence[str]) -> float:
    return float(np.mean([a == b for a, b in zip(found, expected, strict=True)]))


def sweep(
    index: CollectionIndex,
    queries: np.ndarray[Any, Any],
    truths: Sequence[str],
    efs: Sequence[int],
    timed: int,
) -> list[dict[str, Any]]:
    exact = top_subjects(with_policy(index, EXACT), queries)
    exact_recall = share_equal(exact, truths)
    contenders = {ef: with_policy(index, fixed_ef(ef)) for ef in efs}
    times: dict[int, list[float]] = {ef: [] for ef in efs}
    for row in range(min(timed, len(queries))):
        for ef, contender in contenders.items():
            started = time.perf_counter()
            contender.search(queries[row : row + 1], TOP_K)
            times[ef].append((time.perf_counter() - started) * 1e3)
    rows = []
    for ef, contender in contenders.items():
        found = top_subjects(contender, queries)
        recall = share_equal(found, truths)
        rows.append(
            {
                "ef_search": ef,
                "recall_at_1": recall,
                "exact_recall_at_1": exact_recall,
                "recall_vs_exact": recall / exact_recall,
                "top1_agreement": share_equal(found, exact),
                "search_p50_ms": float(np.percentile(times[ef], 50)),
                "search_p99_ms": float(np.percentile(times[ef], 99)),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common.add_model_arguments(parser)
    parser.add_argument("--gallery", type=Path, required=True, help="a kept gallery directory")
    parser.add_argument("--ef", default="256,384,512,768,1024", help="efSearch values")
    parser.add_argument("--timed", type=int, default=300, help="queries timed per value")
    parser.add_argument("--seed", type=int, default=20261201, help="bench.scale's")
    parser.add_argument("--cache-dir", type=Path, default=common.REPO_ROOT / "bench/results/scale")
    args = parser.parse_args(argv)
    machine = common.machine_description()
    common.print_machine(machine)
    faiss.omp_set_num_threads(1)
    settings = Settings(models_dir=args.models_dir, auth=False, log_level="WARNING").model_copy(
        update=common.model_overrides(args)
    )
    faces = load_real_faces(settings, args.data_root, args.cache_dir)
    probes = split_probe_set(faces, seed=args.seed).probes
    index = load_collection(args.gallery, model_id=faces.model_id, dim=probes.embeddings.shape[1])
    size = index.face_count
    print(f"{args.gallery}: {size} live faces ({index.kind.value}), {len(probes)} probes")
    truths = [subject_of(identity) for identity in probes.identities]
    efs = [int(value) for value in args.ef.split(",")]
    rows = sweep(index, probes.embeddings, truths, efs, args.timed)
    print(
        common.format_table(
            ["efSearch", "recall@1", "exact", "vs exact", "top-1 agree", "p50 ms", "p99 ms"],
            [
                [
                    row["ef_search"],
                    f"{row['recall_at_1']:.4f}",
                    f"{row['exact_recall_at_1']:.4f}",
                    f"{row['recall_vs_exact']:.4f}",
                    f"{row['top1_agreement']:.4f}",
                    f"{row['search_p50_ms']:.2f}",
                    f"{row['search_p99_ms']:.2f}",
                ]
                for row in rows
            ],
        )
    )
    print(f"shipped rule at {size} faces: efSearch {DEFAULT_POLICY.ef_search_for(size)}")
    end = common.machine_description()
    common.print_machine(end)
    if args.json_out:
        common.write_json(args.json_out, {"machine": [machine, end], "faces": size, "rows": rows})


if __name__ == "__main__":
    main()
