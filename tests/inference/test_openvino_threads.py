"""Concurrent first inferences on OpenVINO sessions in a fresh process never deadlock.

The binding's first numpy <-> OpenVINO type conversions in a process can deadlock
two threads against the GIL (``app.inference.engines.openvino_session``), freezing
the whole process: a server whose first two requests arrived together answered
nothing, ever. The conversions happen once per process, so each attempt here is a
fresh process whose threads make their first inferences at the same instant;
several attempts run at once, as contention makes the race likelier.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serving import REPO

pytest.importorskip("openvino")

ATTEMPTS = 6
THREADS = 8
# An attempt takes a few seconds on a busy 2-core machine; this long is a deadlock.
DEADLOCK_TIMEOUT_S = 120.0

_FIRST_INFERENCES = """
import sys, threading
from pathlib import Path
import numpy as np
import openvino as ov
from app.inference.engines.base import RuntimeOptions
from app.inference.engines.factory import create_engine_session

model = Path(sys.argv[1]).read_bytes()
session = create_engine_session(model, "scrfd", RuntimeOptions(engine="openvino", streams=2))
feeds = {session.input_names[0]: np.zeros((1, 3, 640, 640), np.float32)}
start = threading.Barrier(int(sys.argv[2]))
errors = []

def first_inference():
    start.wait()
    try:
        # The conversion run() makes first (openvino's data_dispatcher: the request
        # tensor's type to a numpy dtype), straight away: a run alone gets there
        # after some C++ work, at scattered times, and deadlocked only under load.
        ov.Type.f32.to_dtype()
        session.run(feeds)
    except BaseException as error:
        errors.append(error)

threads = [threading.Thread(target=first_inference) for _ in range(start.parties)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert not errors, errors
print("ran", start.parties)
"""


def test_threads_making_a_processs_first_openvino_inferences_together_all_finish(
    models_dir: Path, tmp_path: Path
) -> None:
    model = models_dir / "scrfd_500m.onnx"
    environment = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # SIGABRT: every thread's stack
    logs = [tmp_path / f"attempt-{n}.log" for n in range(ATTEMPTS)]
    attempts = []
    for log in logs:
        with log.open("wb") as output:
            attempts.append(
                subprocess.Popen(
                    [sys.executable, "-c", _FIRST_INFERENCES, str(model), str(THREADS)],
                    cwd=REPO,
                    env=environment,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + DEADLOCK_TIMEOUT_S
    for attempt in attempts:
        with contextlib.suppress(subprocess.TimeoutExpired):  # still running: reported below
            attempt.wait(timeout=max(0.1, deadline - time.monotonic()))
    deadlocked = [attempt for attempt in attempts if attempt.poll() is None]
    for attempt in deadlocked:
        attempt.send_signal(signal.SIGABRT)
        attempt.wait()

    outcomes = [
        ("deadlocked" if attempt in deadlocked else f"exit {attempt.returncode}", log.read_text())
        for attempt, log in zip(attempts, logs, strict=True)
    ]
    failed = [(what, output) for what, output in outcomes if what != "exit 0"]
    assert not failed, f"{len(failed)} of {ATTEMPTS} attempts failed:\n\n" + "\n\n".join(
        f"{what}:\n{output[-6000:]}" for what, output in failed
    )
    assert all(output.strip().endswith(f"ran {THREADS}") for _, output in outcomes)
