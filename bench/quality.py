"""Face quality on real photos: the distribution of ``app.core.quality`` scores, and what
an enrollment quality gate at each ``FACEREC_MIN_QUALITY`` would accept.

The service's own code runs every step (decode, SCRFD, alignment, quality), with the
enrollment rule of ``face_policy=largest``: the largest face of each photo. Sets:

* LFW (every image under lfw/images), CelebA (labels.csv), CFP frontal and profile
  photos: real enrollment photos; a default gate must keep accepting them;
* degraded copies of the first LFW images: Gaussian blur (sigma 2 and 3 px) and a
  4x downscale (faces of ~25 px): what a quality gate is for.

    python -m bench.quality [--lfw-limit N] [--cfp-identities N] [--degraded N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from app.core.quality import FaceQuality, assess_face
from app.core.service import QualityGate
from app.core.types import ImageArray
from app.inference.align import align_face
from app.inference.loader import build_detector, load_model
from app.inference.session import RuntimeOptions
from bench.common import (
    add_model_arguments,
    available_cores,
    format_table,
    list_images,
    load_rgb,
    machine_description,
    print_machine,
    read_celeba,
    write_json,
)

THRESHOLDS = (0.0, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
# The service's enrollment gates before quality existed (FACEREC_MIN_FACE_SIZE / _DET_SCORE).
LEGACY_GATE = QualityGate(min_face_size=32, min_det_score=0.6)


@dataclass
class SetResult:
    name: str
    photos: int = 0
    no_face: int = 0
    legacy_rejected: int = 0
    qualities: list[FaceQuality] = field(default_factory=list)  # of legacy-accepted faces

    def accepted_at(self, threshold: float) -> float:
        """Share of the photos the legacy gates accepted that ``threshold`` also accepts."""
        if not self.qualities:
            return float("nan")
        return sum(q.score >= threshold for q in self.qualities) / len(self.qualities)


Degrade = Callable[[ImageArray], ImageArray]


def blurred(sigma: float) -> Degrade:
    def degrade(pixels: ImageArray) -> ImageArray:
        image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(sigma))
        return np.asarray(image)

    return degrade


def downscaled(factor: int) -> Degrade:
    def degrade(pixels: ImageArray) -> ImageArray:
        image = Image.fromarray(pixels)
        small = image.resize(
            (image.width // factor, image.height // factor), Image.Resampling.BILINEAR
        )
        return np.asarray(small)

    return degrade


def measure(
    name: str,
    paths: Iterable[Path],
    detect: Callable[[ImageArray], list],  # type: ignore[type-arg]
    degrade: Degrade | None = None,
) -> SetResult:
    result = SetResult(name)
    for path in paths:
        pixels = load_rgb(path)
        if degrade is not None:
            pixels = degrade(pixels)
        result.photos += 1
        detections = detect(pixels)
        if not detections:
            result.no_face += 1
            continue
        face = max(detections, key=lambda d: d.area)
        if (
            min(face.width, face.height) < LEGACY_GATE.min_face_size
            or face.score < LEGACY_GATE.min_det_score
        ):
            result.legacy_rejected += 1
            continue
        result.qualities.append(assess_face(face, align_face(pixels, face.landmarks)))
    return result


def reasons_of(result: SetResult) -> str:
    counts: dict[str, int] = {}
    for quality in result.qualities:
        for reason in quality.reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--lfw-limit", type=int, default=0, help="LFW images (0 = all)")
    parser.add_argument("--cfp-identities", type=int, default=100, help="CFP identities")
    parser.add_argument("--degraded", type=int, default=300, help="LFW images to degrade")
    args = parser.parse_args()

    description = machine_description()
    print_machine(description)
    options = RuntimeOptions(
        providers=("CPUExecutionProvider",), intra_op_threads=available_cores()
    )
    detector = build_detector(
        load_model(
            args.detector or "scrfd_500m",
            "detector",
            models_dir=args.models_dir,
            catalog_dir=None,
            options=options,
        )
    )
    data = args.data_root
    lfw = list_images(data / "lfw" / "images")
    lfw_sample = lfw[: args.lfw_limit] if args.lfw_limit else lfw
    cfp_ids = sorted(p for p in (data / "cfp" / "images").iterdir() if p.is_dir())
    cfp_ids = cfp_ids[: args.cfp_identities]
    degraded = lfw[: args.degraded]
    sets = [
        ("LFW", lfw_sample, None),
        ("CelebA", [row.path for row in read_celeba(data / "celeba")], None),
        ("CFP frontal", [p for i in cfp_ids for p in list_images(i / "frontal")], None),
        ("CFP profile", [p for i in cfp_ids for p in list_images(i / "profile")], None),
        ("LFW blur sigma 2", degraded, blurred(2.0)),
        ("LFW blur sigma 3", degraded, blurred(3.0)),
        ("LFW downscaled 4x", degraded, downscaled(4)),
    ]
    results = []
    started = time.perf_counter()
    for name, paths, degrade in sets:
        results.append(measure(name, paths, detector.detect, degrade))
        print(f"  {name}: {results[-1].photos} photos, {time.perf_counter() - started:.0f} s")

    print("\nshare of the photos the size/score gates accept that a min quality also accepts:")
    headers = ["set", "photos", "no face", "gate rejects", *(f">={t:g}" for t in THRESHOLDS)]
    rows = [
        [
            r.name,
            r.photos,
            r.no_face,
            r.legacy_rejected,
            *(f"{100 * r.accepted_at(t):.2f}" for t in THRESHOLDS),
        ]
        for r in results
    ]
    print(format_table(headers, rows))
    print("\nscore percentiles (p1 / p5 / p50) and reasons among the gate-accepted faces:")
    for r in results:
        scores = np.array([q.score for q in r.qualities]) if r.qualities else np.zeros(1)
        p1, p5, p50 = np.percentile(scores, [1, 5, 50])
        print(f"  {r.name}: {p1:.3f} / {p5:.3f} / {p50:.3f}; reasons: {reasons_of(r)}")
    print_machine(machine_description())
    if args.json_out:
        write_json(
            args.json_out,
            {
                "machine": description,
                "thresholds": THRESHOLDS,
                "sets": [
                    {
                        "name": r.name,
                        "photos": r.photos,
                        "no_face": r.no_face,
                        "gate_rejected": r.legacy_rejected,
                        "accepted": {str(t): r.accepted_at(t) for t in THRESHOLDS},
                        "scores": [q.score for q in r.qualities],
                    }
                    for r in results
                ],
            },
        )


if __name__ == "__main__":
    main()
