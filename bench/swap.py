"""What a zero-downtime model swap costs live traffic, on a real ``facerec serve``.

CFP identities are enrolled through the API; one client identifies in a loop before,
during and after ``POST /admin/models/activate`` (``w600k_mbf_int8`` ->
``w600k_mbf_int8_fast``, the same ONNX file, another model id), then during a
rollback. Printed: identify latency per phase and its ratio to the phase before the
swap (same run, same machine), answers that were not 200, the swap's duration and
faces re-embedded per second.

    python -m bench.swap --identities 40
    python -m bench.swap --identities 40 --database-url postgresql://...   # PostgreSQL

With ``--database-url`` (a server with pgvector, e.g. ``python -m tests.pgserver``) the
gallery is a fresh database ``facerec_bench_swap`` on that server, dropped afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    REPO_ROOT,
    default_data_root,
    default_models_dir,
    format_table,
    machine_description,
    print_machine,
    write_json,
)
from bench.serving import ServerProcess

COLLECTION = "bench"
NEW_MANIFEST = REPO_ROOT / "models" / "manifests" / "w600k_mbf_int8_fast.json"
_RUNNING = ("loading", "copying", "switching")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=40, help="CFP identities enrolled")
    parser.add_argument("--photos", type=int, default=2, help="frontal photos enrolled each")
    parser.add_argument("--baseline-requests", type=int, default=30)
    parser.add_argument("--batch-size", default="32", help="FACEREC_SWAP_BATCH_SIZE")
    parser.add_argument("--pause-ms", default="20", help="FACEREC_SWAP_PAUSE_MS")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--data-root", type=Path, default=default_data_root())
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server to swap on (a database of its own is created there)",
    )
    return parser.parse_args()


def identify_once(http: httpx.Client, photo: Path) -> tuple[float, int, str | None]:
    started = time.perf_counter()
    response = http.post(
        "/identify",
        params={"collection": COLLECTION},
        files={"image": (photo.name, photo.read_bytes())},
    )
    elapsed = time.perf_counter() - started
    model = response.json()["model"]["recognizer"] if response.status_code == 200 else None
    return elapsed, response.status_code, model


def phase(name: str, samples: list[tuple[float, int, str | None]]) -> dict[str, Any]:
    latencies = sorted(s[0] * 1000 for s in samples)
    return {
        "phase": name,
        "requests": len(samples),
        "not_200": sum(1 for s in samples if s[1] != 200),
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "models": list(dict.fromkeys(s[2] for s in samples if s[2])),  # in order seen
    }


def during(http: httpx.Client, probes: list[Path], start: str, body: dict[str, str]) -> Any:
    """Identify in a loop from the moment ``start`` is posted until its job is done,
    and once more after (the first answer of the new model)."""
    started = time.perf_counter()
    answer = http.post(start, json=body)
    assert answer.status_code == 202, answer.text
    samples: list[tuple[float, int, str | None]] = []
    while True:
        samples.append(identify_once(http, probes[len(samples) % len(probes)]))
        swap = http.get("/ready").json()["swap"]
        if swap["state"] not in _RUNNING:
            samples.append(identify_once(http, probes[len(samples) % len(probes)]))
            break
    return samples, time.perf_counter() - started, swap


@contextmanager
def bench_database(server_url: str | None) -> Iterator[str | None]:
    """A fresh database on ``server_url`` for the run (None: the embedded gallery)."""
    if server_url is None:
        yield None
        return
    import psycopg

    name = "facerec_bench_swap"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def generation_sizes(url: str, faces: int) -> dict[str, float]:
    """On-disk bytes per face of each embedding set (after VACUUM), and of the crops."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
        row = connection.execute(
            "SELECT pg_total_relation_size('faces'), pg_total_relation_size('face_vectors_1'), "
            "pg_total_relation_size('face_crops')"
        ).fetchone()
    assert row is not None
    return {
        "faces": row[0] / faces,
        "generation_1": row[1] / faces,
        "crops": row[2] / faces,
    }


def main() -> None:
    args = parse_args()
    description = machine_description()
    print_machine(description)
    cfp = args.data_root / "cfp" / "images"
    identities = sorted(p.name for p in cfp.iterdir())[: args.identities]
    probes = [cfp / i / "frontal" / f"{args.photos + 1:02d}.jpg" for i in identities]
    with tempfile.TemporaryDirectory() as scratch, bench_database(args.database_url) as url:
        settings = {
            "FACEREC_MODELS_DIR": str(args.models_dir),
            "FACEREC_DATA_DIR": str(Path(scratch) / "data"),
            "FACEREC_AUTH": "off",
            "FACEREC_RATE_LIMIT_PER_SECOND": "0",
            "FACEREC_SWAP_BATCH_SIZE": args.batch_size,
            "FACEREC_SWAP_PAUSE_MS": args.pause_ms,
        }
        if url is not None:
            settings["FACEREC_DATABASE_URL"] = url
        with (
            ServerProcess(settings, Path(scratch) / "server.log") as server,
            httpx.Client(base_url=server.url, timeout=600) as http,
        ):
            for identity in identities:
                photos = [cfp / identity / "frontal" / f"{n:02d}.jpg" for n in range(1, 3)]
                http.post(
                    "/enroll",
                    params={"collection": COLLECTION},
                    data={"subject": identity, "face_policy": "largest"},
                    files=[("images", (p.name, p.read_bytes())) for p in photos],
                ).raise_for_status()
            faces = http.get("/ready").json()["gallery_faces"]
            before = [
                identify_once(http, probes[n % len(probes)]) for n in range(args.baseline_requests)
            ]
            swap_samples, swap_s, swap = during(
                http, probes, "/admin/models/activate", {"manifest": str(NEW_MANIFEST)}
            )
            after = [
                identify_once(http, probes[n % len(probes)]) for n in range(args.baseline_requests)
            ]
            back_samples, back_s, back = during(http, probes, "/admin/models/rollback", {})
            sizes = None if url is None else generation_sizes(url, faces)
    phases = [
        phase("before", before),
        phase("during activate", swap_samples),
        phase("after", after),
        phase("during rollback", back_samples),
    ]
    base = phases[0]["p50_ms"]
    backend = "PostgreSQL" if args.database_url else "embedded"
    print(
        f"gallery ({backend}): {faces} faces ({len(identities)} CFP identities x "
        f"{args.photos} photos)"
    )
    print(
        format_table(
            ["phase", "requests", "not 200", "p50 ms", "p95 ms", "p50 / before", "models"],
            [
                [
                    p["phase"],
                    p["requests"],
                    p["not_200"],
                    f"{p['p50_ms']:.0f}",
                    f"{p['p95_ms']:.0f}",
                    f"{p['p50_ms'] / base:.2f}",
                    " -> ".join(m.split("@")[0] for m in p["models"]),
                ]
                for p in phases
            ],
        )
    )
    print(
        f"activate: {swap['state']}, {swap['faces_done']} faces re-embedded in {swap_s:.1f} s "
        f"({swap['faces_done'] / swap_s:.1f} faces/s, model load included); "
        f"rollback: {back['state']}, {back['faces_done']} faces in {back_s:.1f} s"
    )
    if sizes is not None:
        print(
            "PostgreSQL bytes per face: generation 0 (faces table and indexes, crops apart) "
            f"{sizes['faces']:.0f}, generation 1 (face_vectors_1 and its indexes) "
            f"{sizes['generation_1']:.0f}, crops {sizes['crops']:.0f}"
        )
    if args.out:
        write_json(
            args.out,
            {
                "machine": description,
                "faces": faces,
                "phases": phases,
                "activate_s": swap_s,
                "activate": swap,
                "rollback_s": back_s,
                "rollback": back,
                "postgres_bytes_per_face": sizes,
            },
        )


if __name__ == "__main__":
    main()
