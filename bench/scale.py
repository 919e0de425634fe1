"""A million faces: /identify latency, recall and resources at 10k, 100k and 1M faces.

Run from the repository root (the 1M size needs ~8 GB of disk and ~4 GB of memory)::

    python -m bench.scale --json-out bench/results/scale.json
    python -m bench.scale --sizes 10000,100000          # quicker
    python -m bench.scale --backend postgres --database-url postgresql://...

What it does (every step reusable on its own, see the functions):

1. **Data** (``scale_data``): real embeddings of LFW, CFP and CelebA photos made by
   the service's pipeline, split by identity into mates (enrolled), probes (other
   photos of the same people, searched) and background identities, from which face-like
   distractors are synthesised (``distractors``; how, and how face-like, is printed).
   Cached in ``bench/results/scale/``.
2. **Galleries** (``build_galleries``): for each size, the mates plus distractors, added
   with ``facerec gallery import-embeddings`` exactly as a user would (import rate).
   Sizes are nested: each gallery is the previous one plus more distractors.
3. **Servers**: one real ``facerec serve`` per size (start-up time, memory).
4. **Latency** (``measure_latency``): the probe photos are sent to ``POST /identify``
   over HTTP, by 1 client and by 8 concurrent clients; requests alternate between the
   sizes (per probe, or per block of 8 clients), so a busy machine slows every size
   alike and the ratios stay meaningful.
5. **Quality** (``exact_reference``): every probe's top hit is compared with exact
   search over the very same gallery rows: recall@1 of the mates (the probe's own
   identity first) against exact search's, and agreement of the top hit.
"""

from __future__ import annotations

import argparse
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

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
from bench.distractors import (
    GENUINE_QUANTILES,
    IMPOSTOR_QUANTILES,
    genuine_similarities,
    impostor_similarities,
    quantiles,
)
from bench.probes import subject_of
from bench.scale_data import ScaleData, load_scale_data
from bench.scale_openset import (
    OPEN_SET_HEADER,
    AppliedThreshold,
    format_open_set,
    measure_open_set,
)
from bench.serving import ServerProcess

COLLECTION = "scale"
WRITE_CHUNK = 50_000
HTTP_TIMEOUT_S = 600.0
CONCURRENT_CLIENTS = 8
_IMPORT_LINE = re.compile(r"(\d+) faces added, (\d+) already there, in ([0-9.]+) s")


# --- backends ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where one gallery size lives, as FACEREC_* settings for the CLI and the server."""

    size: int
    settings: dict[str, str]
    collection: str


class Backend(Protocol):
    name: str

    def target(self, size: int, previous: Target | None) -> Target:
        """A place for the gallery of ``size`` faces, holding ``previous``' faces if any."""
        ...

    def existing(self, size: int) -> Target:
        """The gallery of ``size`` faces a previous ``--keep`` run left, untouched."""
        ...

    def storage_bytes(self, target: Target) -> dict[str, int]: ...


class EmbeddedBackend:
    """One data directory per size; a bigger size starts as a copy of the smaller one."""

    name = "embedded"

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = work_dir

    def target(self, size: int, previous: Target | None) -> Target:
        directory = self._work_dir / f"gallery-{size}"
        if directory.exists():
            shutil.rmtree(directory)
        if previous is not None:
            shutil.copytree(Path(previous.settings["FACEREC_DATA_DIR"]), directory)
            (directory / "gallery.lock").unlink(missing_ok=True)
        return Target(size, {"FACEREC_DATA_DIR": str(directory)}, COLLECTION)

    def existing(self, size: int) -> Target:
        directory = self._work_dir / f"gallery-{size}"
        if not directory.is_dir():
            raise SystemExit(f"--reuse: no kept gallery in {directory}")
        return Target(size, {"FACEREC_DATA_DIR": str(directory)}, COLLECTION)

    def storage_bytes(self, target: Target) -> dict[str, int]:
        directory = Path(target.settings["FACEREC_DATA_DIR"])
        database = sum(path.stat().st_size for path in directory.glob("gallery.sqlite3*"))
        snapshot = sum(path.stat().st_size for path in (directory / "index").glob("*"))
        return {"database": database, "index_snapshot": snapshot}


class PostgresBackend:
    """One collection per size in the database at ``database_url`` (issue 10, part A).

    The PostgreSQL gallery is selected by ``FACEREC_DATABASE_URL``; every size is a
    collection of its own, so no copies are needed: each collection is imported in full.
    """

    name = "postgres"

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url

    def target(self, size: int, previous: Target | None) -> Target:
        return Target(size, {"FACEREC_DATABASE_URL": self._database_url}, f"{COLLECTION}{size}")

    def existing(self, size: int) -> Target:
        return self.target(size, None)

    def storage_bytes(self, target: Target) -> dict[str, int]:
        import psycopg  # the [postgres] extra

        with psycopg.connect(self._database_url) as connection:
            row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
        return {"database": int(row[0]) if row else 0}


# --- galleries -------------------------------------------------------------------------


@dataclass(slots=True)
class BuiltGallery:
    target: Target
    imported_rows: int
    import_s: float  # the import itself, as the CLI reports it
    command_s: float  # the whole command: start, checks, import, snapshot at close
    storage: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # rows of the file that were already in the gallery

    @property
    def import_rate(self) -> float:
        return self.imported_rows / self.import_s if self.import_s else 0.0


def gallery_rows(data: ScaleData, start: int, stop: int) -> Iterator[tuple[list[str], FloatArray]]:
    """Rows ``start..stop`` of the nested galleries (mates first), a chunk at a time."""
    mates = data.split.mates
    mate_subjects = [subject_of(identity) for identity in mates.identities]
    for first in range(start, stop, WRITE_CHUNK):
        last = min(stop, first + WRITE_CHUNK)
        subjects: list[str] = []
        parts: list[FloatArray] = []
        if first < len(mates):
            subjects += mate_subjects[first : min(last, len(mates))]
            parts.append(mates.embeddings[first : min(last, len(mates))])
        if last > len(mates):
            low, high = max(first, len(mates)) - len(mates), last - len(mates)
            subjects += data.distractors.subjects[low:high]
            parts.append(np.asarray(data.distractors.embeddings[low:high]))
        yield subjects, np.concatenate(parts).astype(np.float32)


def build_galleries(
    data: ScaleData, backend: Backend, sizes: Sequence[int], args: argparse.Namespace
) -> list[BuiltGallery]:
    from app.bulk.npz import EmbeddingFileWriter

    built: list[BuiltGallery] = []
    previous: Target | None = None
    for size in sizes:
        record = args.work_dir / f"build-{backend.name}-{size}.json"
        if args.reuse:
            built.append(reused_gallery(backend.existing(size), record, data))
            previous = built[-1].target
            continue
        target = backend.target(size, previous if backend.name == "embedded" else None)
        start = previous.size if previous is not None and backend.name == "embedded" else 0
        increment = args.work_dir / f"import-{size}.npz"
        with EmbeddingFileWriter(
            increment, model_id=data.faces.model_id, dim=data.faces.embeddings.shape[1]
        ) as writer:
            for subjects, embeddings in gallery_rows(data, start, size):
                writer.write(subjects, [""] * len(subjects), embeddings)
            writer.commit()
        print(f"importing {size - start} faces into the {size}-face gallery ...", flush=True)
        started = time.perf_counter()
        result = run_cli(
            args,
            target,
            "gallery",
            "import-embeddings",
            "--no-progress",
            "--collection",
            target.collection,
            str(increment),
        )
        command_s = time.perf_counter() - started
        increment.unlink()
        found = _IMPORT_LINE.search(result)
        # Rows already there: the same photo twice in a data set gives the same row.
        if found is None or int(found.group(1)) + int(found.group(2)) != size - start:
            raise RuntimeError(f"unexpected import result: {result}")
        gallery = BuiltGallery(target, size - start, float(found.group(3)), command_s)
        gallery.duplicates = int(found.group(2))
        gallery.storage = backend.storage_bytes(target)
        write_json(record, {**build_record(gallery), "data": data.split.describe()})
        built.append(gallery)
        previous = target
    return built


def build_record(gallery: BuiltGallery) -> dict[str, Any]:
    return {
        "imported_rows": gallery.imported_rows,
        "import_s": gallery.import_s,
        "command_s": gallery.command_s,
        "duplicates": gallery.duplicates,
        "storage": gallery.storage,
    }


def reused_gallery(target: Target, record: Path, data: ScaleData) -> BuiltGallery:
    """A gallery kept by an earlier run of the same data, with that run's import figures."""
    import json

    if not record.is_file():
        raise SystemExit(f"--reuse: {record} is missing (the gallery was not built with it)")
    saved = json.loads(record.read_text(encoding="utf-8"))
    if saved["data"] != data.split.describe():
        raise SystemExit(f"--reuse: {record} was built from other data: {saved['data']}")
    print(f"{target.size}: reusing the kept gallery (import figures from {record.name})")
    return BuiltGallery(
        target,
        saved["imported_rows"],
        saved["import_s"],
        saved["command_s"],
        saved["storage"],
        saved["duplicates"],
    )


def run_cli(args: argparse.Namespace, target: Target, *command: str) -> str:
    environment = server_settings(args, target)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *command],
        cwd=REPO_ROOT,
        env={**_clean_environment(), **environment},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"facerec {' '.join(command)} failed:\n{result.stderr}")
    return result.stdout


def server_settings(args: argparse.Namespace, target: Target) -> dict[str, str]:
    settings = {
        "FACEREC_MODELS_DIR": str(args.models_dir),
        "FACEREC_AUTH": "false",
        **target.settings,
    }
    for name, value in model_overrides(args).items():
        settings[f"FACEREC_{name.upper()}"] = value
    return settings


def _clean_environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}


# --- probes and measurement -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    photo: bytes
    truth: str  # the subject the probe's mate is enrolled as


def load_probes(data: ScaleData, data_root: Path, limit: int | None) -> list[Probe]:
    probes = data.split.probes
    rows = list(range(len(probes)))
    if limit is not None and limit < len(rows):
        rows = sorted(np.random.default_rng(7).choice(len(rows), limit, replace=False).tolist())
    return [
        Probe(
            name=probes.paths[row],
            photo=(data_root / probes.paths[row]).read_bytes(),
            truth=subject_of(probes.identities[row]),
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Answer:
    """What one /identify said about the photo's largest face, and how long it took."""

    latency_ms: float
    top1: str | None  # best candidate (None: no face, or no candidate)
    match: str | None  # the match at or above the threshold, else None
    threshold: tuple[float, str, float | None, int]  # threshold, source, target, size


@dataclass(slots=True)
class Observed:
    latencies_ms: list[float] = field(default_factory=list)
    top1: dict[int, str | None] = field(default_factory=dict)  # probe number -> subject
    match: dict[int, str | None] = field(default_factory=dict)  # probe number -> match
    thresholds: list[tuple[float, str, float | None, int]] = field(default_factory=list)


def identify(client: httpx.Client, probe: Probe, collection: str) -> Answer:
    """One /identify of ``probe``: latency, top candidate and match of its largest face."""
    started = time.perf_counter()
    response = client.post(
        "/identify",
        params={"collection": collection},
        data={"top_k": "5"},
        files={"image": (Path(probe.name).name, probe.photo)},
    )
    elapsed = (time.perf_counter() - started) * 1e3
    response.raise_for_status()
    body = response.json()
    threshold = (
        float(body["threshold"]),
        str(body["threshold_source"]),
        body["target_fpir"],
        int(body["gallery_size"]),
    )
    faces = body["faces"]
    if not faces:
        return Answer(elapsed, None, None, threshold)
    largest = max(faces, key=lambda face: _area(face["bbox"]))
    candidates = largest["candidates"]
    match = largest["match"]["subject"] if largest["match"] else None
    return Answer(elapsed, candidates[0]["subject"] if candidates else None, match, threshold)


def _area(bbox: Sequence[float]) -> float:
    return max(0.0, bbox[2] - bbox[0]) * max(0.0, bbox[3] - bbox[1])


def measure_single_client(
    servers: dict[int, tuple[ServerProcess, str]], probes: Sequence[Probe], warmup: int
) -> dict[int, Observed]:
    """Every probe once per size, the sizes in turn for each probe."""
    observed = {size: Observed() for size in servers}
    clients = {
        size: httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S)
        for size, (server, _) in servers.items()
    }
    try:
        for size, (_, collection) in servers.items():
            for probe in probes[:warmup]:
                identify(clients[size], probe, collection)
        for number, probe in enumerate(probes):
            for size, (_, collection) in servers.items():
                answer = identify(clients[size], probe, collection)
                observed[size].latencies_ms.append(answer.latency_ms)
                observed[size].top1[number] = answer.top1
                observed[size].match[number] = answer.match
                observed[size].thresholds.append(answer.threshold)
    finally:
        for client in clients.values():
            client.close()
    return observed


def measure_concurrent(
    servers: dict[int, tuple[ServerProcess, str]],
    probes: Sequence[Probe],
    *,
    clients: int,
    rounds: int,
    per_client: int,
) -> dict[int, list[float]]:
    """``clients`` threads at once on one size, sizes in turn, ``rounds`` times."""
    latencies: dict[int, list[float]] = {size: [] for size in servers}
    errors: list[BaseException] = []
    cursor = 0
    for _ in range(rounds):
        for size, (server, collection) in servers.items():
            work: queue.Queue[Probe] = queue.Queue()
            for _ in range(clients * per_client):
                work.put(probes[cursor % len(probes)])
                cursor += 1

            def run(
                url: str = server.url,
                name: str = collection,
                out: int = size,
                work: queue.Queue[Probe] = work,
            ) -> None:
                try:
                    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as client:
                        while True:
                            try:
                                probe = work.get_nowait()
                            except queue.Empty:
                                return
                            latencies[out].append(identify(client, probe, name).latency_ms)
                except BaseException as error:
                    errors.append(error)

            threads = [threading.Thread(target=run) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    return latencies


@dataclass(frozen=True, slots=True)
class ExactAnswer:
    top1: list[str]  # exact top-1 subject per probe
    best_distractor: FloatArray  # highest distractor similarity per probe
    own_mate: FloatArray  # highest similarity to the probe's own mates


def exact_reference(data: ScaleData, size: int, probe_rows: Sequence[int]) -> ExactAnswer:
    """Exact search of the cached probe embeddings over the gallery's exact rows."""
    probes = data.split.probes.embeddings[np.asarray(probe_rows, dtype=np.int64)]
    truths = np.array([subject_of(data.split.probes.identities[row]) for row in probe_rows])
    best = np.full(len(probes), -2.0, dtype=np.float32)
    best_subject = np.empty(len(probes), dtype=object)
    best_distractor = np.full(len(probes), -2.0, dtype=np.float32)
    own_mate = np.full(len(probes), -2.0, dtype=np.float32)
    mates = len(data.split.mates)
    for chunk_start, (subjects, embeddings) in zip(
        range(0, size, WRITE_CHUNK), gallery_rows(data, 0, size), strict=True
    ):
        scores = probes @ embeddings.T
        names = np.array(subjects, dtype=object)
        top = scores.argmax(axis=1)
        top_scores = scores[np.arange(len(probes)), top]
        better = top_scores > best
        best[better] = top_scores[better]
        best_subject[better] = names[top[better]]
        is_distractor = np.arange(chunk_start, chunk_start + len(subjects)) >= mates
        if is_distractor.any():
            best_distractor = np.maximum(best_distractor, scores[:, is_distractor].max(axis=1))
        own = names[None, :] == truths[:, None]
        own_mate = np.maximum(own_mate, np.where(own, scores, -2.0).max(axis=1))
    return ExactAnswer(
        top1=[str(subject) for subject in best_subject],
        best_distractor=best_distractor,
        own_mate=own_mate,
    )


# --- reports -----------------------------------------------------------------------------


def similarity_report(data: ScaleData, samples: int, seed: int) -> dict[str, Any]:
    """Impostor and genuine similarity quantiles: distractors next to real faces."""
    faces, distractors = data.faces, data.distractors
    pool = np.asarray(distractors.embeddings[: min(len(distractors.subjects), 200_000)])
    pool_subjects = distractors.subjects[: len(pool)]
    probes = data.split.probes
    impostors = {
        "real vs real (different people)": impostor_similarities(
            faces.embeddings,
            faces.identities,
            faces.embeddings,
            faces.identities,
            limit=samples,
            seed=seed,
        ),
        "distractor vs distractor": impostor_similarities(
            pool, pool_subjects, pool, pool_subjects, limit=samples, seed=seed + 1
        ),
        "real probe vs distractor": impostor_similarities(
            probes.embeddings,
            probes.identities,
            pool,
            pool_subjects,
            limit=samples,
            seed=seed + 2,
        ),
    }
    synthetic_pairs = _synthetic_genuine(pool, pool_subjects)
    genuine = {
        "real (same person)": genuine_similarities(faces, limit=samples, seed=seed),
        "distractor (same synthetic identity)": synthetic_pairs,
    }
    return {
        "impostor_quantiles": list(IMPOSTOR_QUANTILES),
        "impostor": {
            name: quantiles(values, IMPOSTOR_QUANTILES) for name, values in impostors.items()
        },
        "impostor_mean_std": {
            name: [float(values.mean()), float(values.std())] for name, values in impostors.items()
        },
        "genuine_quantiles": list(GENUINE_QUANTILES),
        "genuine": {name: quantiles(values, GENUINE_QUANTILES) for name, values in genuine.items()},
        "centre_scale": data.model.centre_scale,
    }


def _synthetic_genuine(pool: FloatArray, subjects: Sequence[str]) -> FloatArray:
    """Similarities of consecutive rows of one synthetic identity (rows are grouped)."""
    names = np.asarray(subjects)
    same = names[1:] == names[:-1]
    values: FloatArray = np.einsum("ij,ij->i", pool[1:][same], pool[:-1][same]).astype(np.float32)
    return values


def print_similarity_report(report: dict[str, Any]) -> None:
    levels = report["impostor_quantiles"]
    print("\nimpostor similarity (cosine) quantiles: distractors next to real faces")
    print(
        format_table(
            ["pairs", "mean", "std", *(f"q{level:g}" for level in levels)],
            [
                [name, f"{mean:.3f}", f"{std:.3f}", *(f"{v:.3f}" for v in values)]
                for (name, values), (mean, std) in zip(
                    report["impostor"].items(), report["impostor_mean_std"].values(), strict=True
                )
            ],
        )
    )
    print("\ngenuine similarity quantiles")
    print(
        format_table(
            ["pairs", *(f"q{level:g}" for level in report["genuine_quantiles"])],
            [[name, *(f"{v:.3f}" for v in values)] for name, values in report["genuine"].items()],
        )
    )
    print(f"(distractor faces = normalise({report['centre_scale']:.3f} * centre + real deviation))")


def ef_search_of(backend: str, size: int) -> int | None:
    """The HNSW candidate list the embedded gallery's policy gives ``size`` faces."""
    if backend != "embedded":
        return None
    from app.gallery.embedded.vectors import DEFAULT_POLICY, IndexKind

    if DEFAULT_POLICY.kind_for(size, IndexKind.EXACT) is IndexKind.EXACT:
        return None
    return DEFAULT_POLICY.ef_search_for(size)


def percentile(values: Sequence[float], level: float) -> float:
    return float(np.percentile(np.asarray(values), level)) if values else float("nan")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_model_arguments(parser)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backend", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument("--database-url", help="for --backend postgres")
    parser.add_argument("--probes", type=int, help="use this many probes (default: all)")
    parser.add_argument("--warmup", type=int, default=10, help="requests per size, not timed")
    parser.add_argument("--rounds", type=int, default=6, help="8-client blocks per size")
    parser.add_argument("--per-client", type=int, default=6, help="requests per client a block")
    parser.add_argument("--similarity-samples", type=int, default=4_000_000)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "bench/results/scale")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO_ROOT / "bench/results/scale/work",
        help="galleries and server logs (replaced on every run)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the galleries afterwards")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="measure the galleries a --keep run left (same data), without importing again",
    )
    args = parser.parse_args(argv)
    args.size_list = sorted(int(size) for size in args.sizes.split(","))
    if args.backend == "postgres" and not args.database_url:
        parser.error("--backend postgres needs --database-url")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_description()
    print_machine(machine)
    settings = Settings(models_dir=args.models_dir, auth=False, log_level="WARNING").model_copy(
        update=model_overrides(args)
    )
    data = load_scale_data(
        settings,
        args.data_root,
        args.cache_dir,
        count=max(args.size_list) - 0,
        seed=args.seed,
    )
    print(data.split.describe())
    similarity = similarity_report(data, args.similarity_samples, args.seed)
    print_similarity_report(similarity)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    backend: Backend = (
        EmbeddedBackend(args.work_dir)
        if args.backend == "embedded"
        else PostgresBackend(args.database_url)
    )
    built = build_galleries(data, backend, args.size_list, args)
    probes = load_probes(data, args.data_root, args.probes)
    probe_rows = [data.split.probes.paths.index(probe.name) for probe in probes]
    results: dict[int, dict[str, Any]] = {}
    servers: dict[int, tuple[ServerProcess, str]] = {}
    try:
        for gallery in built:
            server = ServerProcess(
                server_settings(args, gallery.target),
                args.work_dir / f"server-{gallery.target.size}.log",
            ).start()
            servers[gallery.target.size] = (server, gallery.target.collection)
            print(f"{gallery.target.size}: server ready in {server.startup_s:.1f} s", flush=True)
        single = measure_single_client(servers, probes, args.warmup)
        concurrent = measure_concurrent(
            servers,
            probes,
            clients=CONCURRENT_CLIENTS,
            rounds=args.rounds,
            per_client=args.per_client,
        )
        for gallery in built:
            size = gallery.target.size
            server, _ = servers[size]
            rss, peak = server.memory_mb()
            exact = exact_reference(data, size, probe_rows)
            truths = [probe.truth for probe in probes]
            http_top = [single[size].top1[number] for number in range(len(probes))]
            recall = float(
                np.mean([top == truth for top, truth in zip(http_top, truths, strict=True)])
            )
            exact_recall = float(
                np.mean([t == truth for t, truth in zip(exact.top1, truths, strict=True)])
            )
            results[size] = {
                "faces": size,
                "import_rows": gallery.imported_rows,
                "import_rows_already_there": gallery.duplicates,
                "import_rows_per_s": round(gallery.import_rate),
                "import_command_s": round(gallery.command_s, 1),
                "storage_bytes": gallery.storage,
                "startup_s": round(server.startup_s, 2),
                "gallery_open_s": server.gallery_open_s(),
                "rss_mb": round(rss),
                "peak_rss_mb": round(peak),
                "p50_ms_1_client": round(percentile(single[size].latencies_ms, 50), 1),
                "p99_ms_1_client": round(percentile(single[size].latencies_ms, 99), 1),
                "p50_ms_8_clients": round(percentile(concurrent[size], 50), 1),
                "p99_ms_8_clients": round(percentile(concurrent[size], 99), 1),
                "requests_1_client": len(single[size].latencies_ms),
                "requests_8_clients": len(concurrent[size]),
                "recall_at_1": round(recall, 4),
                "exact_recall_at_1": round(exact_recall, 4),
                "recall_vs_exact": round(recall / exact_recall, 4) if exact_recall else None,
                "top1_agreement": round(
                    float(np.mean([a == b for a, b in zip(http_top, exact.top1, strict=True)])), 4
                ),
                "probes_without_face": sum(top is None for top in http_top),
                "ef_search": ef_search_of(args.backend, size),
                "best_distractor_quantiles": quantiles(exact.best_distractor, (0.5, 0.9, 0.99)),
                "own_mate_quantiles": quantiles(exact.own_mate, (0.01, 0.1, 0.5)),
            }
    finally:
        for server, _ in servers.values():
            server.stop()
    for gallery in built:
        add_open_set(results[gallery.target.size], gallery.target, data, single, probes)
    report(results, args)
    end = machine_description()
    print_machine(end)
    if args.json_out:
        write_json(
            args.json_out,
            {
                "machine": [machine, end],
                "backend": args.backend,
                "probe_set": data.split.describe(),
                "similarity": similarity,
                "sizes": results,
            },
        )
    if not args.keep and args.backend == "embedded":
        for gallery in built:
            shutil.rmtree(gallery.target.settings["FACEREC_DATA_DIR"], ignore_errors=True)


def add_open_set(
    row: dict[str, Any],
    target: Target,
    data: ScaleData,
    single: dict[int, Observed],
    probes: Sequence[Probe],
) -> None:
    """FPIR/FNIR at the threshold the server reported, and recall@1 over every probe,
    searched in-process in the gallery the (now stopped) server served."""
    size = target.size
    applied = AppliedThreshold.of(single[size].thresholds)
    print(f"{size}: open-set search of {len(data.split.strangers)} strangers ...", flush=True)
    rates, probe_top1 = measure_open_set(
        target.settings,
        target.collection,
        data.split,
        applied,
        model_id=data.faces.model_id,
        dim=data.faces.embeddings.shape[1],
    )
    matches = [single[size].match[number] for number in range(len(probes))]
    rates["http_fnir"] = round(
        float(np.mean([m != probe.truth for m, probe in zip(matches, probes, strict=True)])), 4
    )
    row["open_set"] = rates
    for path, subject, similarity in rates["false_match_list"]:
        print(f"{size}: false match {path} -> {subject} ({similarity:.4f})")
    everyone = list(range(len(data.split.probes)))
    exact = exact_reference(data, size, everyone)
    truths = [subject_of(identity) for identity in data.split.probes.identities]
    recall = float(np.mean([a == b for a, b in zip(probe_top1, truths, strict=True)]))
    exact_recall = float(np.mean([a == b for a, b in zip(exact.top1, truths, strict=True)]))
    row["all_probes"] = {
        "probes": len(everyone),
        "recall_at_1": round(recall, 4),
        "exact_recall_at_1": round(exact_recall, 4),
        "recall_vs_exact": round(recall / exact_recall, 4) if exact_recall else None,
        "top1_agreement": round(
            float(np.mean([a == b for a, b in zip(probe_top1, exact.top1, strict=True)])), 4
        ),
    }


def report(results: dict[int, dict[str, Any]], args: argparse.Namespace) -> None:
    base = results[min(results)]
    print(f"\n{args.backend} backend, /identify over HTTP (ratios against {min(results)} faces)")
    print(
        format_table(
            [
                *("faces", "p50 1c", "p99 1c", "p99 1c x", "p50 8c", "p99 8c", "p99 8c x"),
                *("recall@1", "exact", "vs exact", "top-1 agree"),
            ],
            [
                [
                    size,
                    row["p50_ms_1_client"],
                    row["p99_ms_1_client"],
                    f"{row['p99_ms_1_client'] / base['p99_ms_1_client']:.2f}",
                    row["p50_ms_8_clients"],
                    row["p99_ms_8_clients"],
                    f"{row['p99_ms_8_clients'] / base['p99_ms_8_clients']:.2f}",
                    row["recall_at_1"],
                    row["exact_recall_at_1"],
                    row["recall_vs_exact"],
                    row["top1_agreement"],
                ]
                for size, row in sorted(results.items())
            ],
        )
    )
    print("\nrecall@1 over every probe, searched in-process (the gallery's own search)")
    print(
        format_table(
            ["faces", "HNSW ef", "probes", "recall@1", "exact", "vs exact", "top-1 agree"],
            [
                [
                    size,
                    row["ef_search"],
                    row["all_probes"]["probes"],
                    row["all_probes"]["recall_at_1"],
                    row["all_probes"]["exact_recall_at_1"],
                    row["all_probes"]["recall_vs_exact"],
                    row["all_probes"]["top1_agreement"],
                ]
                for size, row in sorted(results.items())
            ],
        )
    )
    print("\nopen set at the threshold /identify reported (FPIR: Poisson 95% interval)")
    print(
        format_table(
            OPEN_SET_HEADER,
            [format_open_set(size, row["open_set"]) for size, row in sorted(results.items())],
        )
    )
    print("\nbuild and resources")
    print(
        format_table(
            [
                *("faces", "imported", "rows/s", "command s", "database MB", "snapshot MB"),
                *("start-up s", "gallery open s", "RSS MB", "peak RSS MB"),
            ],
            [
                [
                    size,
                    row["import_rows"],
                    row["import_rows_per_s"],
                    row["import_command_s"],
                    round(row["storage_bytes"].get("database", 0) / 2**20),
                    round(row["storage_bytes"].get("index_snapshot", 0) / 2**20),
                    row["startup_s"],
                    row["gallery_open_s"],
                    row["rss_mb"],
                    row["peak_rss_mb"],
                ]
                for size, row in sorted(results.items())
            ],
        )
    )
    print("\nhow hard the distractors are: per probe, exact search")
    print(
        format_table(
            ["faces", "best distractor q50/q90/q99", "own mate q01/q10/q50"],
            [
                [
                    size,
                    "/".join(f"{v:.3f}" for v in row["best_distractor_quantiles"]),
                    "/".join(f"{v:.3f}" for v in row["own_mate_quantiles"]),
                ]
                for size, row in sorted(results.items())
            ],
        )
    )


if __name__ == "__main__":
    main()
