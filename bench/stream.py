"""Live recognition speed: one 640x480 stream with 1 to 3 faces, processed fps and latency.

Run from the repository root::

    python -m bench.stream                     # 120 frames per contender + 10 s live
    python -m bench.stream --frames 300 --live-seconds 0

Frames: three LFW people (each enrolled from two other photos) cropped to 200x200
and pasted on a dark 640x480 canvas, drifting a few pixels per frame; the first
third of the frames shows one person, the next two, the last three. Frames are
JPEG-encoded once up front, as a browser sends them; decoding is part of every
timing, as on the server.

Part 1, frames back to back (``StreamSession.process`` then
``StreamSession.recognise`` of the job it picked, the exact code the /stream
worker and its background recogniser run, in-process, one after the other): the
answer path's time per frame (``process``: decode, detect, track, fold, label)
p50 and p99, the whole work's p99 (with the recognition), and the sustained rate
1 / mean whole work. Contenders, interleaved frame by frame in rotating order
so background load hits all of them alike:

- every face, every frame: the recognizer runs on every face of every frame
  (``ReidPolicy(interval=1, max_per_frame=0)``): what calling /identify per frame
  costs, with the tracker's bookkeeping on top;
- tracker re-id: the service's default policy (undecided tracks first, named ones
  every ``FACEREC_STREAM_REID_INTERVAL`` frames, at most
  ``FACEREC_STREAM_MAX_RECOGNITIONS_PER_FRAME`` per frame);

each with the stream detector input (``FACEREC_STREAM_DETECT_SIZE``, 320 on the
long side: 320x256 for 640x480) and with the detector manifest's own photo policy
(640x480 here).

Part 2, live (``--live-seconds``): the real /stream WebSocket (TestClient, the
app's lifespan, default stream settings apart from the re-id policy and the
inference workers) fed at 30 frames per second by a paced client thread;
processed fps, server-reported ``latency_ms`` p50/p99, the share of frames
dropped, and recognitions folded per answer. With one inference worker (the
default) a frame that arrives during a background recognition waits for the
worker; with two, detection and recognition run side by side.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.core.types import ImageArray
from app.inference.loader import build_detector
from app.main import Runtime, build_runtime, build_stream_hub, create_app
from app.stream.hub import scaled_detector
from app.stream.reid import ReidPolicy
from app.stream.session import RecognitionOutcome, StreamEngine, StreamSession
from bench.common import (
    add_model_arguments,
    format_table,
    load_rgb,
    machine_description,
    model_overrides,
    print_machine,
    write_json,
)

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
FACE_SIDE = 200  # LFW's 250x250 photos, centre-cropped: three fit side by side
# (subject, LFW person, enrolled photo numbers, streamed photo number)
PEOPLE = [
    ("George W. Bush", "George_W_Bush", (7, 16), 65),
    ("Donald Rumsfeld", "Donald_Rumsfeld", (39, 60), 51),
    ("Jacques Chirac", "Jacques_Chirac", (2, 19), 20),
]
COLLECTION = "bench"
CAMERA_FPS = 30.0
JPEG_QUALITY = 80
EVERY_FRAME = ReidPolicy(interval=1, max_per_frame=0)


@dataclass(slots=True)
class Contender:
    name: str
    detector_input: str
    session: StreamSession
    seconds: list[float] = field(default_factory=list)  # answer path plus recognition
    answer_seconds: list[float] = field(default_factory=list)  # answer path only
    finished: list[RecognitionOutcome] = field(default_factory=list)
    recognised: int = 0
    faces: int = 0


def lfw_path(data_root: Path, person: str, number: int) -> Path:
    return data_root / "lfw" / "images" / person / f"{person}_{number:04d}.jpg"


def encode_jpeg(frame: ImageArray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def build_frames(data_root: Path, count: int) -> list[bytes]:
    """``count`` JPEG frames: 1, then 2, then 3 drifting faces."""
    margin = (250 - FACE_SIDE) // 2
    faces = [
        load_rgb(lfw_path(data_root, person, number))[
            margin : margin + FACE_SIDE, margin : margin + FACE_SIDE
        ]
        for _, person, _, number in PEOPLE
    ]
    frames = []
    for index in range(count):
        visible = 1 + min(2, 3 * index // max(count, 1))
        drift = index % 20 if index % 40 < 20 else 20 - index % 20  # back and forth
        canvas = np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), 24, dtype=np.uint8)
        for slot, face in enumerate(faces[:visible]):
            left = 5 + slot * (FACE_SIDE + 5) + drift
            top = 120 + (drift if slot % 2 else -drift)
            canvas[top : top + FACE_SIDE, left : left + FACE_SIDE] = face
        frames.append(encode_jpeg(canvas))
    return frames


def enroll_people(runtime: Runtime, data_root: Path) -> None:
    for subject, person, numbers, _ in PEOPLE:
        images = [(f"{person}_{n}", lfw_path(data_root, person, n).read_bytes()) for n in numbers]
        runtime.service.enroll(COLLECTION, subject, images, "largest")


def contenders(runtime: Runtime) -> list[Contender]:
    base = build_stream_hub(runtime).engine
    detector = build_detector(runtime.detector)
    stream_size = runtime.settings.stream_detect_size
    photo_detect = scaled_detector(detector, 0)
    variants: list[tuple[str, str, StreamEngine]] = [
        ("every face, every frame", f"stream {stream_size}", replace(base, policy=EVERY_FRAME)),
        ("tracker re-id", f"stream {stream_size}", base),
        (
            "every face, every frame",
            "photo policy",
            replace(base, policy=EVERY_FRAME, detect=photo_detect),
        ),
        ("tracker re-id", "photo policy", replace(base, detect=photo_detect)),
    ]
    return [
        Contender(name, size, engine.open_session(COLLECTION)) for name, size, engine in variants
    ]


def run_back_to_back(players: list[Contender], frames: list[bytes]) -> None:
    for index, data in enumerate(frames):
        shift = index % len(players)
        for player in players[shift:] + players[:shift]:
            start = time.perf_counter()
            result = player.session.process(data, index, player.finished)
            answered = time.perf_counter()
            player.finished = (
                [player.session.recognise(result.job)] if result.job is not None else []
            )
            player.answer_seconds.append(answered - start)
            player.seconds.append(time.perf_counter() - start)
            player.recognised += len(result.recognised)
            player.faces += len(result.faces)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def back_to_back_rows(players: list[Contender]) -> list[dict[str, Any]]:
    rows = []
    for player in players:
        milliseconds = [s * 1000 for s in player.seconds]
        answer_milliseconds = [s * 1000 for s in player.answer_seconds]
        rows.append(
            {
                "mode": player.name,
                "detector_input": player.detector_input,
                "frames": len(player.seconds),
                "faces_per_frame": player.faces / len(player.seconds),
                "recognitions_per_frame": player.recognised / len(player.seconds),
                "fps": 1000 / statistics.fmean(milliseconds),
                "answer_p50_ms": percentile(answer_milliseconds, 50),
                "answer_p99_ms": percentile(answer_milliseconds, 99),
                "p99_ms": percentile(milliseconds, 99),
                "max_ms": max(milliseconds),
            }
        )
    return rows


def run_live(settings: Settings, frames: list[bytes], seconds: float) -> dict[str, Any]:
    """Frames at CAMERA_FPS over the real /stream WebSocket for ``seconds``."""
    total = int(seconds * CAMERA_FPS)
    answers: list[dict[str, Any]] = []
    with (
        TestClient(create_app(settings)) as client,
        client.websocket_connect(f"/stream?collection={COLLECTION}") as socket,
    ):

        def send() -> None:
            start = time.perf_counter()
            for index in range(total):
                time.sleep(max(0.0, start + index / CAMERA_FPS - time.perf_counter()))
                socket.send_bytes(frames[index % len(frames)])

        sender = threading.Thread(target=send, daemon=True)
        started = time.perf_counter()
        sender.start()
        while not answers or answers[-1]["frame"] != total - 1:
            answers.append(socket.receive_json())
        elapsed = time.perf_counter() - started
        sender.join()
    latencies = [a["latency_ms"] for a in answers]
    return {
        "sent": total,
        "processed": len(answers),
        "fps": len(answers) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "dropped_share": sum(a["dropped_count"] for a in answers) / total,
        "recognitions_per_frame": statistics.fmean(len(a["recognised"]) for a in answers),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--frames", type=int, default=120, help="frames per contender (120)")
    parser.add_argument(
        "--live-seconds", type=float, default=10.0, help="seconds per live run; 0 skips (10)"
    )
    return parser.parse_args(argv)


def print_report(rows: list[dict[str, Any]], live: dict[str, dict[str, Any]]) -> None:
    table = [
        [
            row["mode"],
            row["detector_input"],
            f"{row['faces_per_frame']:.2f}",
            f"{row['recognitions_per_frame']:.2f}",
            f"{row['fps']:.1f}",
            f"{row['answer_p50_ms']:.1f}",
            f"{row['answer_p99_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['fps'] / rows[0]['fps']:.2f}x",
        ]
        for row in rows
    ]
    headers = ["mode", "detector input", "faces/frame", "recognised/frame", "fps"]
    print("\nframes back to back (time per frame, decode included; answer: without recognition)")
    print(
        format_table([*headers, "answer p50 ms", "answer p99 ms", "p99 ms", "fps vs first"], table)
    )
    if live:
        print(f"\nlive: /stream WebSocket fed at {CAMERA_FPS:.0f} fps (server latency_ms)")
        print(
            format_table(
                ["mode", "sent", "processed", "fps", "p50 ms", "p99 ms", "dropped", "recognised"],
                [
                    [
                        name,
                        r["sent"],
                        r["processed"],
                        f"{r['fps']:.1f}",
                        f"{r['p50_ms']:.1f}",
                        f"{r['p99_ms']:.1f}",
                        f"{r['dropped_share']:.0%}",
                        f"{r['recognitions_per_frame']:.2f}",
                    ]
                    for name, r in live.items()
                ],
            )
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_description()
    print_machine(machine)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as scratch:
        # No API keys in a benchmark (a setting Settings ignores where it does not exist).
        overrides: dict[str, Any] = {"auth": False, **model_overrides(args)}
        settings = Settings(
            models_dir=args.models_dir,
            data_dir=Path(scratch) / "gallery",
            log_level="WARNING",
            **overrides,
        )
        frames = build_frames(args.data_root, args.frames)
        runtime = build_runtime(settings)
        enroll_people(runtime, args.data_root)
        players = contenders(runtime)
        print(f"{len(frames)} frames {FRAME_WIDTH}x{FRAME_HEIGHT}, 1 to 3 faces; contenders:")
        for number, player in enumerate(players, start=1):
            print(f"  {number}. {player.name}, detector {player.detector_input}")
        warm_up = Contender("warm-up", "", players[0].session.engine.open_session(COLLECTION))
        run_back_to_back([warm_up], frames[:5])
        run_back_to_back(players, frames)
        rows = back_to_back_rows(players)
        runtime.service.gallery.close()
        live: dict[str, dict[str, Any]] = {}
        if args.live_seconds > 0:
            every_frame = {"stream_reid_interval": 1, "stream_max_recognitions_per_frame": 0}
            two_workers = {"inference_workers": 2}
            for name, update in (
                ("every face, every frame", every_frame),
                ("tracker re-id", {}),
                ("tracker re-id, 2 inference workers", two_workers),
            ):
                live[name] = run_live(settings.model_copy(update=update), frames, args.live_seconds)
    print_report(rows, live)
    after = machine_description()
    print(f"load average (1m) {after['load_average_1m_5m'][0]:.2f} at the end")
    if args.json_out:
        write_json(
            args.json_out,
            {
                "machine": machine,
                "machine_after": after,
                "frames": len(frames),
                "back_to_back": rows,
                "live": live,
            },
        )


if __name__ == "__main__":
    main()
