"""The appearance signal's separation: the same face a few pixels later vs somebody else.

Run from the repository root::

    python -m bench.appearance             # 120 LFW people, about a minute

Each person's first LFW photo is pasted on a 640x480 frame at four nearby places
(JPEG round trip, as frames arrive), detected by the stream's detector
(``FACEREC_STREAM_DETECT_SIZE``) and viewed with ``app.stream.appearance.view_face``.
"Same" is the best similarity of the 4th view to the 2nd and 3rd (what a track
compares: its recent views); "different" the same comparison between two people.
``SPLIT_SIMILARITY`` must sit between the lowest "same" and the highest "different".
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.config import Settings
from app.main import build_runtime, build_stream_hub
from app.stream.appearance import SPLIT_SIMILARITY, best_similarity, view_face
from bench.common import (
    add_model_arguments,
    load_rgb,
    machine_description,
    model_overrides,
    print_machine,
)
from bench.kiosk import encode_jpeg

SHIFTS = ((0, 0), (5, 3), (-4, 6), (2, -5))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--people", type=int, default=120, help="LFW people (120)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print_machine(machine_description())
    people = sorted((args.data_root / "lfw" / "images").iterdir())
    chosen = random.Random(args.seed).sample(people, args.people)
    with tempfile.TemporaryDirectory(prefix="bench-appearance-") as scratch:
        settings = Settings(
            models_dir=args.models_dir,
            data_dir=Path(scratch),
            auth=False,
            log_level="WARNING",
            **model_overrides(args),  # type: ignore[arg-type]
        )
        runtime = build_runtime(settings)
        try:
            engine = build_stream_hub(runtime).engine
            views = []
            for person in chosen:
                photo = load_rgb(sorted(person.glob("*.jpg"))[0])
                signatures = []
                for dx, dy in SHIFTS:
                    canvas = np.full((480, 640, 3), 24, dtype=np.uint8)
                    canvas[100 + dy : 350 + dy, 200 + dx : 450 + dx] = photo
                    image = engine.decode(encode_jpeg(canvas)).pixels
                    detections = engine.detect(image)
                    if not detections:
                        break
                    face = max(detections, key=lambda d: d.area)
                    signatures.append(view_face(image, face.landmarks).signature)
                if len(signatures) == len(SHIFTS):
                    views.append(signatures)
        finally:
            runtime.close()
    same = [best_similarity(v[3], v[1:3]) or 0.0 for v in views]
    different = [
        best_similarity(a[3], b[1:3]) or 0.0
        for i, a in enumerate(views)
        for j, b in enumerate(views)
        if i < j
    ]
    print(f"{len(views)} people detected at all 4 places, {len(different)} pairs")
    print(f"same face:     min {min(same):.3f}  1st percentile {np.percentile(same, 1):.3f}")
    print(
        f"somebody else: max {max(different):.3f}  99.9th percentile "
        f"{np.percentile(different, 99.9):.3f}"
    )
    print(f"SPLIT_SIMILARITY = {SPLIT_SIMILARITY}")


if __name__ == "__main__":
    main()
