"""Cost of one inference turn (one enroll photo) for a normal photo and for the largest
image the default limits accept, interleaved, as a ratio: the worst delay one tenant's
turn imposes on another's (docs/security.md, "Fair share of the inference worker").

    python -m bench.turn_cost [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app.config import Settings
from app.main import build_runtime
from bench.common import default_data_root, default_models_dir, machine_description, print_machine

# The largest square under the default FACEREC_MAX_IMAGE_PIXELS (50 MP).
LARGEST_SIDE = 7000


def zero_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    description = machine_description()
    print_machine(description)
    photo = (
        default_data_root() / "lfw/images/Donald_Rumsfeld/Donald_Rumsfeld_0039.jpg"
    ).read_bytes()
    largest = zero_png(LARGEST_SIDE)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(models_dir=default_models_dir(), data_dir=Path(data_dir), auth=False)
        runtime = build_runtime(settings)
        try:
            service = runtime.service
            timings: dict[str, list[float]] = {"lfw 250x250 jpeg": [], "7000x7000 png": []}
            for _ in range(args.rounds):  # interleaved: both see the same load
                for label, data in zip(timings, (photo, largest), strict=True):
                    started = time.perf_counter()
                    service.enrollment_face(label, data, "single")
                    timings[label].append(time.perf_counter() - started)
        finally:
            runtime.close()
    base = statistics.median(timings["lfw 250x250 jpeg"])
    for label, values in timings.items():
        median = statistics.median(values)
        print(f"{label:18s} median {median * 1000:8.1f} ms  x{median / base:6.1f} of the photo")
    print_machine(machine_description())


if __name__ == "__main__":
    main()
