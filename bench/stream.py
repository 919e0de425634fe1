"""Live recognition: the kiosk sequence (identity changes), speed, and four cameras at once.

Run from the repository root::

    python -m bench.stream --json-out bench/results/stream.json
    python -m bench.stream --live-loops 0          # the in-process parts only

Part 1, kiosk, frames back to back, in-process (``bench/kiosk.py``: 19 visits of 7
LFW people at the same place of a 640x480 frame, 10 frames each, 0-3 empty frames
between, 5 of them enrolled from other photos). Contenders, interleaved frame by
frame in rotating order so that background load hits all alike:

- per-frame /identify: every frame detected, every face embedded and matched on its
  own (what calling ``POST /identify`` per frame gives, without HTTP): the baseline;
- stream (default): ``StreamSession.process`` then ``StreamSession.recognise`` of
  the job it picked, the exact code of the /stream worker and its background
  recogniser, one after the other;
- stream, appearance signal off (``split_similarity=-1``): what the tracker did
  before identity changes were caught.

Per contender: the share of processed frames from each visit's 3rd on (after the
change's 2nd) showing the visit's person (goal >= 95%; for people not enrolled: no
name), frames showing any wrong name (goal 0), and time per frame. The appearance
signal's own cost is measured apart: ``view_face`` per face over the sequence's
detections, and the share of frames where it fired and a face was embedded on the
answer path.

Part 2, frames back to back with 1, 2 then 3 faces drifting (three LFW people),
every face every frame against the default re-id policy.

Part 3, live (``--live-loops``): real ``facerec serve`` processes (auth off), the
kiosk sequence fed over the /stream WebSocket at 30 frames per second by a paced
client: one stream on the default server and on one with the appearance signal off,
alternating ``--live-loops`` times; then four streams at once on the default server,
each fed at 30 fps. Processed fps per stream (goal >= 20 for one stream, >= 8 each
for four), server ``latency_ms`` p50/p99 (goals < 150 ms and < 250 ms), dropped
frames, and the kiosk shares above over the processed frames.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.api.stream_access import SUBPROTOCOL
from app.config import Settings
from app.core.matching import assign_subjects
from app.main import Runtime, build_runtime, build_stream_hub
from app.stream.appearance import view_face
from app.stream.reid import ReidPolicy
from app.stream.session import RecognitionOutcome, StreamEngine, StreamSession
from bench.common import (
    REPO_ROOT,
    add_model_arguments,
    format_table,
    load_rgb,
    machine_description,
    model_overrides,
    print_machine,
    write_json,
)
from bench.kiosk import Kiosk, enrollments, kiosk_sequence
from bench.kiosk import encode_jpeg as kiosk_jpeg

COLLECTION = "bench"
CAMERA_FPS = 30.0
SETTLED_FROM = 2  # 0-based processed frame of a visit from which the name must be right
EVERY_FRAME = ReidPolicy(interval=1, max_per_frame=0, min_quality=0.0, confident_margin=3.0)
GOALS = {"right": 0.95, "fps_one": 20.0, "p99_one_ms": 150.0, "fps_four": 8.0, "p99_four_ms": 250.0}
# (LFW person, photo) of the 1-3 faces stream (part 2).
CROWD = [("George_W_Bush", 65), ("Donald_Rumsfeld", 51), ("Jacques_Chirac", 20)]
FACE_SIDE = 200
STARTUP_TIMEOUT_S = 120.0


# --- scoring ------------------------------------------------------------------------------


@dataclass(slots=True)
class Score:
    """Kiosk shares over processed frames (by the frame index each answer is for)."""

    settled: int = 0
    right: int = 0
    wrong_frames: int = 0
    frames: int = 0
    _seen: dict[int, int] = field(default_factory=dict)  # visit number -> processed so far

    def add(self, kiosk: Kiosk, frame_index: int, faces: Sequence[tuple[Any, str | None]]) -> None:
        """``faces``: (bbox, subject shown) of one processed frame."""
        self.frames += 1
        visit = kiosk.visit_at(frame_index)
        expected = visit.subject if visit else None
        if any(subject is not None and subject != expected for _, subject in faces):
            self.wrong_frames += 1
        if visit is None:
            return
        number = kiosk.visits.index(visit)
        position = self._seen.get(number, 0)
        self._seen[number] = position + 1
        if position < SETTLED_FROM:
            return
        self.settled += 1
        if faces:
            main = max(
                faces, key=lambda face: (face[0][2] - face[0][0]) * (face[0][3] - face[0][1])
            )
            self.right += main[1] == expected

    @property
    def right_share(self) -> float:
        return self.right / self.settled if self.settled else 0.0


# --- part 1: kiosk back to back --------------------------------------------------------------


@dataclass(slots=True)
class KioskPlayer:
    name: str
    step: Callable[[bytes, int], list[tuple[Any, str | None]]]
    score: Score = field(default_factory=Score)
    seconds: list[float] = field(default_factory=list)


def per_frame_identify(
    engine: StreamEngine,
) -> Callable[[bytes, int], list[tuple[Any, str | None]]]:
    def step(data: bytes, _: int) -> list[tuple[Any, str | None]]:
        image = engine.decode(data).pixels
        detections = engine.detect(image)
        if not detections:
            return []
        faces = engine.embed(image, detections)
        candidates = engine.gallery.search(
            COLLECTION, np.stack([face.embedding for face in faces]), 3
        )
        matches = assign_subjects(candidates, engine.threshold)
        return [
            (d.bbox, match.subject if match else None)
            for d, match in zip(detections, matches, strict=True)
        ]

    return step


def stream_steps(session: StreamSession) -> Callable[[bytes, int], list[tuple[Any, str | None]]]:
    finished: list[RecognitionOutcome] = []
    counts = {"checked": 0}

    def step(data: bytes, index: int) -> list[tuple[Any, str | None]]:
        result = session.process(data, index, list(finished))
        finished[:] = [session.recognise(result.job)] if result.job is not None else []
        counts["checked"] += result.checked > 0
        return [(face.bbox, face.subject) for face in result.faces]

    step.counts = counts  # type: ignore[attr-defined]
    return step


def run_kiosk(engine: StreamEngine, kiosk: Kiosk) -> list[KioskPlayer]:
    default = engine.open_session(COLLECTION)
    signal_off = replace(engine, split_similarity=-1.0).open_session(COLLECTION)
    players = [
        KioskPlayer("per-frame /identify", per_frame_identify(engine)),
        KioskPlayer("stream (default)", stream_steps(default)),
        KioskPlayer("stream, appearance signal off", stream_steps(signal_off)),
    ]
    for index, data in enumerate(kiosk.frames):
        shift = index % len(players)
        for player in players[shift:] + players[:shift]:
            started = time.perf_counter()
            faces = player.step(data, index)
            player.seconds.append(time.perf_counter() - started)
            player.score.add(kiosk, index, faces)
    return players


def signal_cost(engine: StreamEngine, kiosk: Kiosk) -> dict[str, float]:
    """``view_face`` per face, over the kiosk's detections, against detection per frame."""
    images = [engine.decode(data).pixels for data in kiosk.frames]
    detect_s: list[float] = []
    faces: list[tuple[Any, Any]] = []
    for image in images:
        started = time.perf_counter()
        detections = engine.detect(image)
        detect_s.append(time.perf_counter() - started)
        faces.extend((image, d.landmarks) for d in detections)
    started = time.perf_counter()
    for image, landmarks in faces:
        view_face(image, landmarks)
    per_face = (time.perf_counter() - started) / max(len(faces), 1)
    return {
        "view_face_us_per_face": per_face * 1e6,
        "detect_ms_per_frame": statistics.fmean(detect_s) * 1000,
        "signal_share_of_detect": per_face / statistics.fmean(detect_s),
    }


# --- part 2: 1-3 faces back to back -----------------------------------------------------------


def crowd_frames(data_root: Path, count: int) -> list[bytes]:
    margin = (250 - FACE_SIDE) // 2
    photos = [
        load_rgb(data_root / "lfw" / "images" / p / f"{p}_{n:04d}.jpg")[
            margin : margin + FACE_SIDE, margin : margin + FACE_SIDE
        ]
        for p, n in CROWD
    ]
    frames = []
    for index in range(count):
        visible = 1 + min(2, 3 * index // max(count, 1))
        drift = index % 20 if index % 40 < 20 else 20 - index % 20
        canvas = np.full((480, 640, 3), 24, dtype=np.uint8)
        for slot, photo in enumerate(photos[:visible]):
            left, top = 5 + slot * (FACE_SIDE + 5) + drift, 120 + (drift if slot % 2 else -drift)
            canvas[top : top + FACE_SIDE, left : left + FACE_SIDE] = photo
        frames.append(kiosk_jpeg(canvas, 80))
    return frames


def run_crowd(engine: StreamEngine, frames: list[bytes]) -> list[dict[str, Any]]:
    players = [
        (
            "every face, every frame",
            stream_steps(replace(engine, policy=EVERY_FRAME).open_session(COLLECTION)),
        ),
        ("stream (default)", stream_steps(engine.open_session(COLLECTION))),
    ]
    seconds: dict[str, list[float]] = {name: [] for name, _ in players}
    for index, data in enumerate(frames):
        shift = index % len(players)
        for name, step in players[shift:] + players[:shift]:
            started = time.perf_counter()
            step(data, index)
            seconds[name].append(time.perf_counter() - started)
    return [timing_row(name, values) for name, values in seconds.items()]


def timing_row(name: str, seconds: list[float]) -> dict[str, Any]:
    milliseconds = np.asarray(seconds) * 1000
    return {
        "mode": name,
        "frames": len(seconds),
        "fps": 1000 / float(milliseconds.mean()),
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
    }


# --- part 3: live, real servers ------------------------------------------------------------------


@contextmanager
def serve(
    settings: dict[str, str], models_dir: Path, data_root: Path, folder: Path
) -> Iterator[str]:
    """A `facerec serve` process with the kiosk people enrolled; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(
        FACEREC_MODELS_DIR=str(models_dir),
        FACEREC_DATA_DIR=str(folder),
        FACEREC_AUTH="false",
        FACEREC_LOG_LEVEL="WARNING",
        **{f"FACEREC_{k.upper()}": v for k, v in settings.items()},
    )
    log = (folder.parent / f"{folder.name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log.name}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for subject, photos in enrollments(data_root):
            response = httpx.post(
                f"{url}/enroll",
                params={"collection": COLLECTION},
                data={"subject": subject},
                files=[("images", (p.name, p.read_bytes())) for p in photos],
                timeout=120,
            )
            response.raise_for_status()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def play(url: str, kiosk: Kiosk, camera: str, results: dict[str, Any], start_delay: float) -> None:
    """The kiosk at CAMERA_FPS over one stream; fills ``results[camera]``."""
    answers: list[dict[str, Any]] = []
    ws_url = url.replace("http://", "ws://") + f"/stream?collection={COLLECTION}&camera={camera}"
    time.sleep(start_delay)
    with connect(ws_url, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None) as stream:
        total = len(kiosk.frames)

        def send() -> None:
            start = time.perf_counter()
            for index, data in enumerate(kiosk.frames):
                time.sleep(max(0.0, start + index / CAMERA_FPS - time.perf_counter()))
                stream.send(data)

        sender = threading.Thread(target=send)
        started = time.perf_counter()
        sender.start()
        while not answers or answers[-1]["frame"] != total - 1:
            answers.append(json.loads(stream.recv(timeout=120)))
        elapsed = time.perf_counter() - started
        sender.join()
    score = Score()
    for answer in answers:
        score.add(kiosk, answer["frame"], [(f["bbox"], f["subject"]) for f in answer["faces"]])
    latencies = [a["latency_ms"] for a in answers]
    results[camera] = {
        "sent": total,
        "processed": len(answers),
        "fps": len(answers) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "dropped_share": sum(a["dropped_count"] for a in answers) / total,
        "right": score.right_share,
        "wrong_frames": score.wrong_frames,
    }


def live_streams(url: str, kiosk: Kiosk, count: int, tag: str) -> list[dict[str, Any]]:
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(camera: str, delay: float) -> None:
        try:
            play(url, kiosk, camera, results, delay)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(f"{tag}{n}", n / CAMERA_FPS / count))
        for n in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [{"stream": name, **row} for name, row in sorted(results.items())]


# --- report ------------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_report(report: dict[str, Any]) -> None:
    kiosk = report["kiosk"]
    baseline = kiosk[0]["fps"]
    print(
        f"\nPart 1: kiosk, {report['kiosk_frames']} frames back to back, "
        f"{report['kiosk_visits']} visits"
    )
    print(
        format_table(
            [
                "contender",
                "right after 2nd",
                "wrong-name frames",
                "fps",
                "p50 ms",
                "p99 ms",
                "checked frames",
                "fps vs per-frame",
            ],
            [
                [
                    r["mode"],
                    f"{r['right']:.1%}",
                    r["wrong_frames"],
                    f"{r['fps']:.1f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['checked_share']:.1%}",
                    f"{r['fps'] / baseline:.2f}x",
                ]
                for r in kiosk
            ],
        )
    )
    cost = report["signal_cost"]
    print(
        f"appearance signal: view_face {cost['view_face_us_per_face']:.0f} us per face, "
        f"{cost['signal_share_of_detect']:.1%} of detection ({cost['detect_ms_per_frame']:.1f} "
        "ms per frame)"
    )
    crowd = report["crowd"]
    print(f"\nPart 2: 1 to 3 faces, {crowd[0]['frames']} frames back to back")
    print(
        format_table(
            ["contender", "fps", "p50 ms", "p99 ms", "fps vs first"],
            [
                [
                    r["mode"],
                    f"{r['fps']:.1f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['fps'] / crowd[0]['fps']:.2f}x",
                ]
                for r in crowd
            ],
        )
    )
    live = report.get("live")
    if not live:
        return
    print(f"\nPart 3: live, kiosk fed at {CAMERA_FPS:.0f} fps per stream to real servers")
    rows = []
    for run in live:
        for row in run["streams"]:
            rows.append(
                [
                    run["mode"],
                    row["stream"],
                    row["processed"],
                    f"{row['fps']:.1f}",
                    f"{row['p50_ms']:.1f}",
                    f"{row['p99_ms']:.1f}",
                    f"{row['dropped_share']:.0%}",
                    f"{row['right']:.1%}",
                    row["wrong_frames"],
                ]
            )
    print(
        format_table(
            [
                "run",
                "stream",
                "processed",
                "fps",
                "p50 ms",
                "p99 ms",
                "dropped",
                "right after 2nd",
                "wrong-name frames",
            ],
            rows,
        )
    )
    for run in live:
        streams = run["streams"]
        one = len(streams) == 1
        fps_goal = GOALS["fps_one"] if one else GOALS["fps_four"]
        p99_goal = GOALS["p99_one_ms"] if one else GOALS["p99_four_ms"]
        if run["mode"].startswith("default"):
            fps_ok = all(s["fps"] >= fps_goal for s in streams)
            p99_ok = all(s["p99_ms"] < p99_goal for s in streams)
            right_ok = all(s["right"] >= GOALS["right"] for s in streams)
            wrong_ok = all(s["wrong_frames"] == 0 for s in streams)
            print(
                f"goals, {run['mode']}: fps >= {fps_goal:.0f} {mark(fps_ok)}, "
                f"p99 < {p99_goal:.0f} ms {mark(p99_ok)}, right >= 95% {mark(right_ok)}, "
                f"wrong 0 {mark(wrong_ok)}"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--crowd-frames", type=int, default=90, help="part 2 frames (90)")
    parser.add_argument(
        "--live-loops", type=int, default=2, help="one-stream live runs per server; 0 skips (2)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_description()
    print_machine(machine)
    overrides: dict[str, Any] = {"auth": False, **model_overrides(args)}
    kiosk = kiosk_sequence(args.data_root)
    report: dict[str, Any] = {
        "machine": machine,
        "kiosk_frames": len(kiosk.frames),
        "kiosk_visits": len(kiosk.visits),
    }
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as scratch:
        settings = Settings(
            models_dir=args.models_dir,
            data_dir=Path(scratch) / "gallery",
            log_level="WARNING",
            **overrides,
        )
        runtime: Runtime = build_runtime(settings)
        try:
            for subject, photos in enrollments(args.data_root):
                runtime.service.enroll(
                    COLLECTION, subject, [(p.name, p.read_bytes()) for p in photos], "largest"
                )
            engine = build_stream_hub(runtime).engine
            players = run_kiosk(engine, kiosk)
            report["kiosk"] = [
                {
                    **timing_row(p.name, p.seconds),
                    "right": p.score.right_share,
                    "wrong_frames": p.score.wrong_frames,
                    "checked_share": getattr(p.step, "counts", {"checked": 0})["checked"]
                    / len(p.seconds),
                }
                for p in players
            ]
            report["signal_cost"] = signal_cost(engine, kiosk)
            report["crowd"] = run_crowd(engine, crowd_frames(args.data_root, args.crowd_frames))
        finally:
            runtime.close()
        if args.live_loops > 0:
            report["live"] = run_live(args, Path(scratch), kiosk)
    print_report(report)
    after = machine_description()
    report["machine_after"] = after
    print(f"load average (1m) {after['load_average_1m_5m'][0]:.2f} at the end")
    if args.json_out:
        write_json(args.json_out, report)


def run_live(args: argparse.Namespace, scratch: Path, kiosk: Kiosk) -> list[dict[str, Any]]:
    live: list[dict[str, Any]] = []
    extra = model_overrides(args)  # detector / recognizer, as FACEREC_* settings
    two = {**extra, "inference_workers": "2"}
    off = {**extra, "stream_split_similarity": "-1"}
    with (
        serve(extra, args.models_dir, args.data_root, scratch / "default") as default,
        serve(off, args.models_dir, args.data_root, scratch / "signal-off") as signal_off,
        serve(two, args.models_dir, args.data_root, scratch / "two-workers") as two_workers,
    ):
        for _ in range(args.live_loops):
            for mode, url, tag in (
                ("default, 1 stream", default, "one"),
                ("appearance signal off, 1 stream", signal_off, "off"),
                ("default + 2 inference workers, 1 stream", two_workers, "two"),
            ):
                live.append({"mode": mode, "streams": live_streams(url, kiosk, 1, tag)})
        for mode, url, tag in (
            ("default, 4 streams", default, "cam"),
            ("default + 2 inference workers, 4 streams", two_workers, "dual"),
        ):
            live.append({"mode": mode, "streams": live_streams(url, kiosk, 4, tag)})
    return live


if __name__ == "__main__":
    main()
