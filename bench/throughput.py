"""Throughput over HTTP: our real server process against the plain insightface wrapper.

Run from the repository root::

    python -m bench.throughput                          # defaults below, 10-20 min on 2 cores
    python -m bench.throughput --clients 4 --passes 1   # the goal's figures only, quicker
    python -m bench.throughput --variant "onnxruntime:FACEREC_ENGINE=onnxruntime"  # one more

Two servers run side by side on this machine: ``facerec serve`` (``app.cli``, the
default configuration but ``FACEREC_AUTH=off``, since the wrapper has no keys
either) and ``bench/insightface_server.py`` (insightface ``FaceAnalysis``, det
640, on copies of the same two model files). Both get ``POST /embed`` with the
same image bytes, from ``--clients`` concurrent HTTP clients. The image set is
cut into chunks and the two servers take turns chunk by chunk, in a rotating
order, so load from other processes falls on both alike. Printed per image set
and client count: images/s, faces/s, the ratio ours / wrapper, latency p50 and
p99 per request (client side: upload, queueing, inference, JSON, download).
Then the in-process stage breakdown of our pipeline (decode, detect, align,
embed, search, serialise) on the same images.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.api.recognition import quality_out
from app.config import Settings
from app.core.quality import assess_face
from app.core.service import FaceService
from app.inference.catalog import resolve_manifest
from app.inference.manifest import resolve_model_file
from app.main import build_runtime
from app.schemas import EmbeddedFaceOut, EmbedResponse, ModelInfo
from bench.common import (
    REPO_ROOT,
    add_model_arguments,
    format_table,
    list_images,
    machine_description,
    print_machine,
    write_insightface_package,
    write_json,
)

STARTUP_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 300.0
OURS, WRAPPER = "ours", "insightface wrapper"


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """A child HTTP server on a free port; its output goes to a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{self.log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} not ready after {STARTUP_TIMEOUT_S} s")

    def ready_body(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/ready", timeout=10).json()
        return body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}


def start_ours(
    name: str,
    models_dir: Path,
    scratch: Path,
    overrides: dict[str, str],
    models: dict[str, str],
) -> ServerProcess:
    env = clean_environment()
    env.update(
        FACEREC_MODELS_DIR=str(models_dir),
        FACEREC_DATA_DIR=str(scratch / f"gallery-{len(list(scratch.iterdir()))}"),
        FACEREC_AUTH="off",
        FACEREC_LOG_LEVEL="WARNING",
    )
    env.update({f"FACEREC_{k.upper()}": v for k, v in models.items()})
    env.update(overrides)
    command = [sys.executable, "-m", "app.cli", "serve"]
    log = scratch / f"{name.replace(' ', '_').replace('/', '_')}.log"
    return ServerProcess(name, command, env, log)


def start_wrapper(settings: Settings, scratch: Path, providers: str) -> ServerProcess:
    files = []
    for task, ref in (("detection", settings.detector), ("recognition", settings.recognizer)):
        manifest, manifest_path = resolve_manifest(ref, settings.catalog_dir)
        path = resolve_model_file(manifest, [manifest_path.parent, settings.models_dir])
        files.append((task, path, manifest.sha256))
    detector, _ = resolve_manifest(settings.detector, settings.catalog_dir)
    assert detector.detector is not None  # the manifest validator requires it
    package = scratch / "insightface-package"
    write_insightface_package(package, files, "InsightFace: non-commercial research use")
    command = [
        sys.executable,
        "-m",
        "bench.insightface_server",
        "--package",
        str(package),
        "--det-thresh",
        str(detector.detector.score_threshold),
        "--providers",
        providers,
    ]
    return ServerProcess(WRAPPER, command, clean_environment(), scratch / "wrapper.log")


# --- load generation -------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """One contender's requests for one (image set, client count)."""

    seconds: float = 0.0
    images: int = 0
    faces: int = 0
    latencies: list[float] = field(default_factory=list)
    faces_per_image: dict[int, int] = field(default_factory=dict)


def run_chunk(url: str, payloads: Sequence[tuple[int, bytes]], clients: int, tally: Tally) -> None:
    """Send ``payloads`` with ``clients`` concurrent clients; add the wall time to ``tally``."""
    position = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        nonlocal position
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
            while True:
                with lock:
                    if position >= len(payloads) or errors:
                        return
                    index, data = payloads[position]
                    position += 1
                try:
                    start = time.perf_counter()
                    response = http.post("/embed", files={"image": ("image", data)})
                    elapsed = time.perf_counter() - start
                    response.raise_for_status()
                    faces = len(response.json()["faces"])
                except BaseException as exc:  # collected, re-raised by the caller
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    tally.latencies.append(elapsed)
                    tally.faces += faces
                    tally.images += 1
                    tally.faces_per_image.setdefault(index, faces)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.seconds += time.perf_counter() - start
    if errors:
        raise errors[0]


def chunks(payloads: list[tuple[int, bytes]], size: int) -> list[list[tuple[int, bytes]]]:
    return [payloads[start : start + size] for start in range(0, len(payloads), size)]


def measure(
    servers: Sequence[ServerProcess],
    payloads: list[tuple[int, bytes]],
    clients: int,
    passes: int,
    chunk_size: int,
) -> dict[str, Tally]:
    tallies = {server.name: Tally() for server in servers}
    turn = 0
    for _ in range(passes):
        for chunk in chunks(payloads, chunk_size):
            order = [servers[(turn + k) % len(servers)] for k in range(len(servers))]
            turn += 1
            for server in order:
                run_chunk(server.url, chunk, clients, tallies[server.name])
    return tallies


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summarise(set_name: str, clients: int, tallies: dict[str, Tally]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, tally in tallies.items():
        rows[name] = {
            "images": tally.images,
            "faces": tally.faces,
            "seconds": tally.seconds,
            "images_per_s": tally.images / tally.seconds,
            "faces_per_s": tally.faces / tally.seconds,
            "latency_p50_ms": percentile(tally.latencies, 50) * 1000,
            "latency_p99_ms": percentile(tally.latencies, 99) * 1000,
        }
    theirs = rows[WRAPPER]
    for row in rows.values():
        row["images_per_s_ratio"] = row["images_per_s"] / theirs["images_per_s"]
        row["faces_per_s_ratio"] = row["faces_per_s"] / theirs["faces_per_s"]
    return {
        "set": set_name,
        "clients": clients,
        "contenders": rows,
        "images_per_s_ratio": rows[OURS]["images_per_s_ratio"],
        "faces_per_s_ratio": rows[OURS]["faces_per_s_ratio"],
    }


# --- in-process stage breakdown --------------------------------------------------------------

STAGES = ("decode", "detect", "refine", "align", "embed", "search", "serialise")


def stage_breakdown(
    service: FaceService, images: Sequence[bytes], model: ModelInfo
) -> dict[str, float]:
    """Seconds per stage over ``images``, through the service's own objects, one at a time."""
    pipeline = service.pipeline
    totals = dict.fromkeys(STAGES, 0.0)
    collection = "bench-stages"
    for data in images:
        marks = [time.perf_counter()]
        decoded = service.decode(data)
        marks.append(time.perf_counter())
        detections = pipeline.detect(decoded.pixels)
        marks.append(time.perf_counter())
        refined = pipeline.refine(decoded.pixels, detections)  # augment.landmarks: mirror
        marks.append(time.perf_counter())
        aligned = [pipeline.aligner(decoded.pixels, d.landmarks) for d in refined]
        marks.append(time.perf_counter())
        embeddings = (
            pipeline.embedder.embed(np.stack(aligned))
            if aligned
            else np.empty((0, pipeline.embedder.dim), np.float32)
        )
        marks.append(time.perf_counter())
        if len(embeddings):
            service.gallery.search(collection, embeddings, 5)
        marks.append(time.perf_counter())
        body = EmbedResponse(
            model=model,
            faces=[
                EmbeddedFaceOut(
                    bbox=d.bbox,
                    det_score=d.score,
                    landmarks=[(float(x), float(y)) for x, y in d.landmarks],
                    quality=quality_out(assess_face(d, crop)),
                    embedding=[float(v) for v in e],
                )
                for d, crop, e in zip(detections, aligned, embeddings, strict=True)
            ],
        )
        body.model_dump_json()  # what FastAPI does with a response model: pydantic-core
        marks.append(time.perf_counter())
        for stage, (start, end) in zip(STAGES, itertools.pairwise(marks), strict=True):
            totals[stage] += end - start
    return totals


def seed_gallery(service: FaceService, images: Sequence[bytes], count: int) -> int:
    """Enroll the largest face of the first ``count`` images (a gallery to search)."""
    from app.core.types import NewFace

    added = 0
    for number, data in enumerate(images[:count]):
        decoded = service.decode(data)
        faces = service.pipeline.analyze(decoded.pixels)
        if faces:
            face = max(faces, key=lambda f: f.detection.area)
            service.gallery.add_faces(
                "bench-stages",
                f"subject-{number}",
                [
                    NewFace(
                        image_sha256=decoded.sha256,
                        bbox=face.detection.bbox,
                        det_score=face.detection.score,
                        embedding=face.embedding,
                        aligned_png=None,
                    )
                ],
            )
            added += 1
    return added


# --- main ---------------------------------------------------------------------------------


def image_sets(data_root: Path, lfw: int, photo_repeats: int) -> dict[str, list[tuple[int, bytes]]]:
    lfw_paths = list_images(data_root / "lfw" / "images")[:lfw]
    photo_paths = list_images(data_root / "photos")
    photos = [(i, p.read_bytes()) for i, p in enumerate(photo_paths)]
    return {
        f"LFW ({len(lfw_paths)} images, 250x250)": [
            (i, p.read_bytes()) for i, p in enumerate(lfw_paths)
        ],
        f"photos ({len(photos)} multi-face photos x {photo_repeats})": photos * photo_repeats,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--lfw", type=int, default=600, help="first N LFW images (default 600)")
    parser.add_argument(
        "--photo-repeats", type=int, default=10, help="times the 7 photos are sent per pass"
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients"
    )
    parser.add_argument("--passes", type=int, default=2, help="passes over each set")
    parser.add_argument("--chunk", type=int, default=0, help="requests per turn (0: auto)")
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="FACEREC_X=V",
        help="a setting of our server (repeatable); the default configuration otherwise",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:FACEREC_X=V,FACEREC_Y=W",
        help="one more server of ours with these settings, in the same rotation (repeatable)",
    )
    parser.add_argument("--skip-stages", action="store_true", help="no in-process breakdown")
    parser.add_argument(
        "--wrapper-providers",
        default="CPUExecutionProvider",
        help="onnxruntime providers of the insightface wrapper (GPU runs: CUDA first)",
    )
    return parser.parse_args(argv)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, settings = text.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return label, env


def print_results(results: list[dict[str, Any]]) -> None:
    rows = []
    for result in results:
        for number, (name, row) in enumerate(result["contenders"].items()):
            rows.append(
                (
                    result["set"] if number == 0 else "",
                    result["clients"],
                    name,
                    f"{row['images_per_s']:.1f}",
                    f"{row['faces_per_s']:.1f}",
                    row["faces"],
                    f"{row['latency_p50_ms']:.0f}",
                    f"{row['latency_p99_ms']:.0f}",
                    f"{row['images_per_s_ratio']:.2f}x" if name != WRAPPER else "1.00x",
                    f"{row['faces_per_s_ratio']:.2f}x" if name != WRAPPER else "1.00x",
                )
            )
    headers = (
        "image set",
        "clients",
        "server",
        "images/s",
        "faces/s",
        "faces",
        "p50 ms",
        "p99 ms",
        "images/s ratio",
        "faces/s ratio",
    )
    print("\n" + format_table(headers, rows))


def print_stages(totals: dict[str, float], images: int, faces: int, title: str) -> None:
    whole = sum(totals.values())
    rows = [
        (stage, f"{s / images * 1000:.2f}", f"{s / max(faces, 1) * 1000:.2f}", f"{s / whole:.1%}")
        for stage, s in [*totals.items(), ("total", whole)]
    ]
    print(f"\nin-process stages, {title} ({images} images, {faces} faces):")
    print(format_table(("stage", "ms/image", "ms/face", "share"), rows))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_description()
    print_machine(machine)
    overrides = dict(item.split("=", 1) for item in args.ours_env)
    chosen = {"detector": args.detector, "recognizer": args.recognizer}
    models = {k: v for k, v in chosen.items() if v}
    # The in-process breakdown runs our configuration too: the same overrides.
    fields = {k.removeprefix("FACEREC_").lower(): v for k, v in overrides.items()}
    settings = Settings(models_dir=args.models_dir, auth=False, **{**fields, **models})
    sets = image_sets(args.data_root, args.lfw, args.photo_repeats)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="facerec-http-bench-") as scratch_name:
        scratch = Path(scratch_name)
        variants = [parse_variant(text) for text in args.variant]
        servers = [
            start_ours(OURS, args.models_dir, scratch, overrides, models),
            *(
                start_ours(label, args.models_dir, scratch, {**overrides, **env}, models)
                for label, env in variants
            ),
            start_wrapper(settings, scratch, args.wrapper_providers),
        ]
        try:
            for server in servers:
                server.wait_ready()
            for server, env in zip(servers, [overrides, *(v for _, v in variants)], strict=False):
                ready = server.ready_body()
                print(
                    f"{server.name}: detector {ready['detector']['model_id']} on "
                    f"{ready['detector']['engine']} {ready['detector']['providers']} "
                    f"{ready['detector']['precision']}, "
                    f"recognizer {ready['recognizer']['model_id']} on "
                    f"{ready['recognizer']['engine']} {ready['recognizer']['precision']}; "
                    f"settings {env or 'default'}"
                )
            print(
                "wrapper: insightface FaceAnalysis det_size (640, 640), default sessions, "
                f"providers {args.wrapper_providers}"
            )
            for name, payloads in sets.items():
                warm = payloads[: min(10, len(payloads))]
                for server in servers:
                    run_chunk(server.url, warm, 2, Tally())
                for clients in args.clients:
                    chunk = args.chunk or max(40, 8 * clients)
                    tallies = measure(servers, payloads, clients, args.passes, chunk)
                    result = summarise(name, clients, tallies)
                    results.append(result)
                    rates = {k: v["images_per_s"] for k, v in result["contenders"].items()}
                    print(
                        f"{name}, {clients} clients: ours {rates[OURS]:.1f} images/s, "
                        f"wrapper {rates[WRAPPER]:.1f}: {result['images_per_s_ratio']:.2f}x "
                        f"images/s, {result['faces_per_s_ratio']:.2f}x faces/s",
                        flush=True,
                    )
        finally:
            for server in servers:
                server.stop()
        print_results(results)
        stages: dict[str, Any] = {}
        if not args.skip_stages:
            runtime = build_runtime(
                settings.model_copy(update={"data_dir": scratch / "stages", "log_level": "WARNING"})
            )
            try:
                service = runtime.service
                model = ModelInfo(
                    detector=runtime.detector.manifest.model_id,
                    recognizer=runtime.recognizer.manifest.model_id,
                )
                for name, payloads in sets.items():
                    unique = list(dict(payloads).values())
                    seed_gallery(service, unique, 200)
                    totals = stage_breakdown(service, unique, model)
                    faces = sum(
                        len(service.pipeline.detect(service.decode(d).pixels)) for d in unique
                    )
                    print_stages(totals, len(unique), faces, name)
                    stages[name] = {"seconds": totals, "images": len(unique), "faces": faces}
            finally:
                runtime.close()
    after = machine_description()
    print(f"load average (1m) {after['load_average_1m_5m'][0]:.2f} at the end")
    if args.json_out:
        write_json(
            args.json_out,
            {
                "machine": machine,
                "machine_after": after,
                "ours_settings": overrides,
                "results": results,
                "stages": stages,
                "median_ratio_images_per_s": statistics.median(
                    r["images_per_s_ratio"] for r in results
                ),
            },
        )


if __name__ == "__main__":
    main()
