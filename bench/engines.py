"""Engine micro-benchmark: each model on onnxruntime and OpenVINO, same bytes, interleaved.

    python -m bench.engines                  # both models, 1 and 2 threads
    python -m bench.engines --rounds 5

The model bytes are those the service loads (manifest import steps applied). Per
(model, input, threads): median ms per call of each contender over ``--runs`` calls,
``--rounds`` rounds alternating them: onnxruntime, OpenVINO in f32 and, on a CPU that
computes bf16 natively, OpenVINO in bf16 (the service's ``auto`` precision there). The
speed-ups are onnxruntime / OpenVINO f32 and OpenVINO f32 / bf16.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from app.inference.catalog import resolve_manifest
from app.inference.engines.base import EngineSession, RuntimeOptions
from app.inference.engines.openvino_session import cpu_computes_bf16
from app.inference.manifest import resolve_model_file
from app.inference.session import create_session
from bench.common import add_model_arguments, format_table, machine_description, print_machine

CASES = (
    ("w600k_mbf_int8", (1, 3, 112, 112)),
    ("w600k_mbf_int8", (4, 3, 112, 112)),
    ("scrfd_500m", (1, 3, 256, 256)),
    ("scrfd_500m", (1, 3, 480, 640)),
)


CONTENDERS = {"onnxruntime": ("onnxruntime", "f32"), "openvino f32": ("openvino", "f32")}
BF16 = {"openvino bf16": ("openvino", "bf16")}


def session(
    name: str, contender: tuple[str, str], threads: int, args: argparse.Namespace
) -> EngineSession:
    manifest, manifest_path = resolve_manifest(name)
    path = resolve_model_file(manifest, [manifest_path.parent, args.models_dir])
    engine, precision = contender
    options = RuntimeOptions(engine=engine, intra_op_threads=threads, precision=precision)  # type: ignore[arg-type]
    return create_session(manifest, path, options)


def median_ms(call: Callable[[], object], runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print_machine(machine_description())
    contenders = {**CONTENDERS, **(BF16 if cpu_computes_bf16() else {})}
    rows = []
    rng = np.random.default_rng(0)
    for name, shape in CASES:
        feed = {"input.1": rng.random(shape, dtype=np.float32)}
        for threads in (1, 2):
            sessions = {k: session(name, c, threads, args) for k, c in contenders.items()}
            results: dict[str, list[float]] = {k: [] for k in sessions}
            for round_number in range(args.rounds):
                order = list(sessions) if round_number % 2 == 0 else list(sessions)[::-1]
                for key in order:
                    results[key].append(median_ms(partial(sessions[key].run, feed), args.runs))
            ms = {key: statistics.median(times) for key, times in results.items()}
            bf16 = ms.get("openvino bf16")
            rows.append(
                (
                    name,
                    "x".join(str(v) for v in shape),
                    threads,
                    *(f"{ms[key]:.2f}" for key in contenders),
                    f"{ms['onnxruntime'] / ms['openvino f32']:.2f}x",
                    "-" if bf16 is None else f"{ms['openvino f32'] / bf16:.2f}x",
                )
            )
    headers = (
        "model",
        "input",
        "threads",
        *(f"{key} ms" for key in contenders),
        "openvino f32 speed-up",
        "bf16 speed-up",
    )
    print(format_table(headers, rows))
    if "openvino bf16" not in contenders:
        print("this CPU has no native bf16: OpenVINO bf16 not measured")
    print(f"load average (1m) {machine_description()['load_average_1m_5m'][0]:.2f} at the end")


if __name__ == "__main__":
    main()
