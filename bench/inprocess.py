"""Throughput of our face pipeline against insightface's FaceAnalysis, same images, same files.

Run from the repository root::

    python -m bench.inprocess                       # 7 photos + 100 LFW + 60 CelebA images
    python -m bench.inprocess --passes 5 --threads 2

Every image is decoded once up front (the service's decoder, RGB for us, a BGR copy
for insightface); decoding is excluded from all timings. Both sides run the same
two ONNX files with the same onnxruntime thread count and detection score
threshold, one image at a time, and the contenders take turns image by image so a
change in background load hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.config import Settings
from app.core.pipeline import FacePipeline
from app.core.types import ImageArray
from app.inference.align import align_face
from app.inference.catalog import resolve_manifest
from app.inference.manifest import DetectorInput, RecognizerInput
from app.main import Runtime, build_runtime
from bench.common import (
    add_model_arguments,
    available_cores,
    format_table,
    list_images,
    load_rgb,
    machine_description,
    model_overrides,
    print_machine,
    read_celeba,
    write_insightface_package,
    write_json,
)

# insightface 2.1's FaceAnalysis.prepare default when det_size is not given.
INSIGHTFACE_DEFAULT_DET_SIZES = [(128, 128), (640, 640)]
CLASSIC_DET_SIZE = (640, 640)

Analyze = Callable[[ImageArray], int]  # one image -> number of faces embedded


@dataclass(slots=True)
class Contender:
    name: str
    images: list[ImageArray]  # RGB for ours, BGR for insightface
    analyze: Analyze
    seconds: list[float] = field(default_factory=list)
    faces_per_image: list[int] = field(default_factory=list)

    def time_image(self, index: int) -> float:
        start = time.perf_counter()
        self.analyze(self.images[index])
        return time.perf_counter() - start


# --- image set ---------------------------------------------------------------------------


def image_set(data_root: Path, lfw_count: int, celeba_count: int) -> list[Path]:
    """All photos/, then the first N LFW and the first M CelebA images by path."""
    photos = list_images(data_root / "photos")
    lfw = list_images(data_root / "lfw" / "images")[:lfw_count]
    celeba = [row.path for row in read_celeba(data_root / "celeba")][:celeba_count]
    return [*photos, *lfw, *celeba]


# --- ours -------------------------------------------------------------------------------


def write_variant(
    ref: str, catalog_dir: Path | None, out_dir: Path, suffix: str, **sections: dict[str, Any]
) -> str:
    """A copy of a manifest with fields of some sections changed, e.g.
    ``import_steps={"dequantize": False}``; returns its path (validated when loaded)."""
    manifest, _ = resolve_manifest(ref, catalog_dir)
    changes: dict[str, Any] = {"name": f"{manifest.name}-{suffix}"}
    for section, fields in sections.items():
        changes[section] = getattr(manifest, section).model_copy(update=fields)
    variant = manifest.model_copy(update=changes)
    path = out_dir / f"{variant.name}.json"
    path.write_text(variant.model_dump_json(indent=2), encoding="utf-8")
    return str(path)


def describe(runtime: Runtime) -> str:
    detector, recognizer = runtime.detector.manifest, runtime.recognizer.manifest
    assert isinstance(detector.input, DetectorInput)  # loader checked the kinds
    assert isinstance(recognizer.input, RecognizerInput)
    scale = (
        f"{detector.input.size[0]}x{detector.input.size[1]}"
        if detector.input.size_policy == "fixed"
        else f"adaptive <= {detector.input.max_side}"
    )
    weights = "dequantized" if recognizer.import_steps.dequantize else "as is"
    flip = ", flip-sum" if recognizer.augment.flip else ""
    return (
        f"{detector.name} ({scale}) + {recognizer.name} ({weights}{flip}, "
        f"batch <= {recognizer.input.max_batch})"
    )


def our_analyze(pipeline: FacePipeline) -> Analyze:
    return lambda image: len(pipeline.analyze(image))


STAGES = ("detect", "align", "embed")


def time_our_stages(pipeline: FacePipeline, image: ImageArray, totals: dict[str, float]) -> None:
    """Add one image's seconds in detect (letterbox, network, output decode, NMS; the
    close-up retry when nothing was found), align and embed, timed apart."""
    start = time.perf_counter()
    detections = pipeline.detect(image)
    detected = time.perf_counter()
    totals["detect"] += detected - start
    if detections:
        aligned_faces = np.stack([align_face(image, d.landmarks) for d in detections])
        aligned = time.perf_counter()
        pipeline.embedder.embed(aligned_faces)
        totals["align"] += aligned - detected
        totals["embed"] += time.perf_counter() - aligned


# --- insightface reference ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reference:
    how: str  # "FaceAnalysis" or the fallback composition
    detector: Any  # insightface SCRFD
    recognizer: Any  # insightface ArcFaceONNX
    analyze: Analyze


def reference_session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def detection_threshold(runtime: Runtime) -> float:
    """Our detector manifest's score threshold, given to insightface too."""
    spec = runtime.detector.manifest.detector
    assert spec is not None  # the manifest validator requires it for detectors
    return spec.score_threshold


def face_analysis_reference(
    package_dir: Path, det_size: Any, threads: int, det_threshold: float
) -> Reference:
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(
        name=str(package_dir),
        allowed_modules=["detection", "recognition"],
        providers=["CPUExecutionProvider"],
        sess_options=reference_session_options(threads),
    )
    app.prepare(ctx_id=-1, det_thresh=det_threshold, det_size=det_size)
    return Reference(
        "FaceAnalysis",
        app.det_model,
        app.models["recognition"],
        lambda image: len(app.get(image)),
    )


def composed_reference(runtime: Runtime, det_size: Any, threads: int) -> Reference:
    """FaceAnalysis.get by hand from model_zoo parts: detect, then per face norm_crop + get_feat."""
    from insightface.app.common import Face
    from insightface.model_zoo import model_zoo

    session = {
        "providers": ["CPUExecutionProvider"],
        "sess_options": reference_session_options(threads),
    }
    detector = model_zoo.get_model(str(runtime.detector.path), **session)
    recognizer = model_zoo.get_model(str(runtime.recognizer.path), **session)
    detector.prepare(-1, input_size=det_size, det_thresh=detection_threshold(runtime))
    recognizer.prepare(-1)

    def analyze(image: ImageArray) -> int:
        boxes, landmarks = detector.detect(image, max_num=0, metric="default")
        for box, points in zip(boxes, landmarks, strict=True):
            recognizer.get(image, Face(bbox=box[:4], kps=points, det_score=box[4]))
        return int(boxes.shape[0])

    return Reference(
        "model_zoo SCRFD + ArcFaceONNX (FaceAnalysis.get by hand)", detector, recognizer, analyze
    )


def build_reference(package_dir: Path, runtime: Runtime, det_size: Any, threads: int) -> Reference:
    try:
        return face_analysis_reference(package_dir, det_size, threads, detection_threshold(runtime))
    except Exception as exc:  # any failure of the third-party loader means: use the fallback
        print(
            f"note: FaceAnalysis could not be built from our files ({exc}); "
            "composing model_zoo parts instead"
        )
        return composed_reference(runtime, det_size, threads)


def time_reference_stages(
    reference: Reference, image: ImageArray, totals: dict[str, float]
) -> None:
    """The same split for insightface: detect, then norm_crop and get_feat per face."""
    from insightface.utils import face_align

    start = time.perf_counter()
    _, landmarks = reference.detector.detect(image, max_num=0, metric="default")
    totals["detect"] += time.perf_counter() - start
    for points in landmarks:
        start = time.perf_counter()
        crop = face_align.norm_crop(
            image, landmark=points, image_size=reference.recognizer.input_size[0]
        )
        aligned = time.perf_counter()
        reference.recognizer.get_feat(crop)
        totals["align"] += aligned - start
        totals["embed"] += time.perf_counter() - aligned


def stage_splits(
    pipeline: FacePipeline,
    reference: Reference,
    rgb: Sequence[ImageArray],
    bgr: Sequence[ImageArray],
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per stage over the image set, ours and the reference alternating per image."""
    ours, theirs = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    for rgb_image, bgr_image in zip(rgb, bgr, strict=True):
        time_our_stages(pipeline, rgb_image, ours)
        time_reference_stages(reference, bgr_image, theirs)
    return ours, theirs


# --- measurement and report ---------------------------------------------------------------


def measure(contenders: Sequence[Contender], passes: int) -> None:
    """A warm-up pass each (recording face counts), then timed passes interleaved per image.

    Every image is run by all contenders back to back, in an order that rotates, so
    load from other processes (this machine is shared) falls on all of them alike.
    """
    for contender in contenders:
        contender.faces_per_image = [contender.analyze(image) for image in contender.images]
    count = len(contenders)
    for index in range(passes):
        totals = [0.0] * count
        for image in range(len(contenders[0].images)):
            for offset in range(count):
                slot = (image + index + offset) % count
                totals[slot] += contenders[slot].time_image(image)
        for contender, seconds in zip(contenders, totals, strict=True):
            contender.seconds.append(seconds)
        print(f"  pass {index + 1}/{passes}: " + ", ".join(f"{s:.2f} s" for s in totals))


def throughput_rows(contenders: Sequence[Contender], baseline: Contender) -> list[dict[str, Any]]:
    rows = []
    for contender in contenders:
        median = statistics.median(contender.seconds)
        faces = sum(contender.faces_per_image)
        rows.append(
            {
                "name": contender.name,
                "images": len(contender.images),
                "faces": faces,
                "median_pass_s": median,
                "best_pass_s": min(contender.seconds),
                "images_per_s": len(contender.images) / median,
                "faces_per_s": faces / median,
                "speed_vs_reference": statistics.median(baseline.seconds) / median,
            }
        )
    return rows


def split_rows(
    totals: dict[str, float], images: int, faces: int
) -> list[tuple[str, str, str, str]]:
    whole = sum(totals.values())
    per_face = {"align", "embed"}
    return [
        (
            stage,
            f"{seconds / images * 1000:.2f}",
            f"{seconds / max(faces, 1) * 1000:.2f}" if stage in per_face else "",
            f"{seconds / whole * 100:.1f}%",
        )
        for stage, seconds in [*totals.items(), ("total", whole)]
    ]


def count_disagreements(ours: Contender, reference: Contender, paths: Sequence[Path]) -> list[str]:
    return [
        f"{path.relative_to(path.parents[1])}: ours {a}, reference {b}"
        for path, a, b in zip(paths, ours.faces_per_image, reference.faces_per_image, strict=True)
        if a != b
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--lfw", type=int, default=100, help="first N LFW images (default 100)")
    parser.add_argument("--celeba", type=int, default=60, help="first M CelebA images (default 60)")
    parser.add_argument(
        "--passes", type=int, default=3, help="timed passes per contender (default 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=available_cores(),
        help="onnxruntime intra-op threads, both sides (default: the cores available)",
    )
    return parser.parse_args(argv)


def our_runtime(base: Settings, scratch_dir: Path, name: str, **models: str) -> Runtime:
    """The app's own composition (build_runtime), each on its own throw-away gallery."""
    settings = base.model_copy(update={"data_dir": scratch_dir / f"gallery-{name}", **models})
    return build_runtime(settings)


def our_variants(base: Settings, scratch_dir: Path) -> dict[str, dict[str, str]]:
    """Label -> Settings model fields of the variants, each one change from the default."""
    catalog = base.catalog_dir
    int8 = write_variant(
        base.recognizer,
        catalog,
        scratch_dir,
        "int8",
        import_steps={"dequantize": False},
        input={"max_batch": 1},  # dynamic quantisation scales over the whole batch
    )
    no_flip = write_variant(
        base.recognizer, catalog, scratch_dir, "noflip", augment={"flip": False}
    )
    fixed = write_variant(
        base.detector, catalog, scratch_dir, "fixed640", input={"size_policy": "fixed"}
    )
    return {
        "ours (default)": {},
        "ours, recognizer INT8 as is": {"recognizer": int8},
        "ours, no flip-sum": {"recognizer": no_flip},
        "ours, detector fixed 640x640": {"detector": fixed},
    }


def print_report(
    rows: list[dict[str, Any]],
    disagreements: list[str],
    splits: dict[str, tuple[dict[str, float], int]],
    images: int,
) -> None:
    table = [
        (
            row["name"],
            f"{row['images_per_s']:.2f}",
            f"{row['faces_per_s']:.2f}",
            row["faces"],
            f"{row['median_pass_s']:.2f}",
            f"{row['best_pass_s']:.2f}",
            f"{row['speed_vs_reference']:.2f}x",
        )
        for row in rows
    ]
    headers = ("contender", "images/s", "faces/s", "faces", "median pass s", "best pass s")
    print("\n" + format_table((*headers, "vs insightface 640"), table))
    print(f"\nimages where face counts differ (ours vs insightface 640): {len(disagreements)}")
    for line in disagreements[:10]:
        print(f"  {line}")
    for title, (split, faces) in splits.items():
        print(f"\nwhere the time goes: {title}")
        stage_rows = split_rows(split, images, faces)
        print(format_table(("stage", "ms/image", "ms/face", "share"), stage_rows))
    ratios = {row["name"]: row["speed_vs_reference"] for row in rows}
    print(
        f"\nours / insightface (det_size 640): {ratios['ours (default)']:.2f}x "
        "the images per second"
    )
    if "ours, no flip-sum" in ratios:
        print(f"  same work per face (ours without flip-sum): {ratios['ours, no flip-sum']:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # skimage's SimilarityTransform.estimate, called by insightface's norm_crop
    warnings.filterwarnings("ignore", message=".*`estimate` is deprecated")
    machine = machine_description()
    print_machine(machine)
    paths = image_set(args.data_root, args.lfw, args.celeba)
    rgb_images = [load_rgb(path) for path in paths]
    bgr_images = [np.ascontiguousarray(image[:, :, ::-1]) for image in rgb_images]
    print(
        f"images: {len(paths)} (photos/, first {args.lfw} LFW, first {args.celeba} CelebA), "
        "decoded once up front; decoding is excluded from every timing"
    )
    print(f"onnxruntime: {args.threads} intra-op threads for every session, inter-op 1, sequential")

    with tempfile.TemporaryDirectory(prefix="facerec-bench-") as scratch:
        scratch_dir = Path(scratch)
        base = Settings(
            models_dir=args.models_dir,
            intra_op_threads=args.threads,
            log_level="WARNING",
            auth=False,  # the runtime only: no HTTP, no keys to create
        ).model_copy(update=model_overrides(args))
        runtimes = {
            name: our_runtime(base, scratch_dir, str(number), **models)
            for number, (name, models) in enumerate(our_variants(base, scratch_dir).items())
        }
        default = runtimes["ours (default)"]
        package_dir = scratch_dir / "insightface-package"
        write_insightface_package(
            package_dir,
            [
                (task, model.path, model.manifest.sha256)
                for task, model in (
                    ("detection", default.detector),
                    ("recognition", default.recognizer),
                )
            ],
            default.recognizer.manifest.licence,
        )
        classic = build_reference(package_dir, default, CLASSIC_DET_SIZE, args.threads)
        multi = build_reference(package_dir, default, None, args.threads)
        for name, runtime in runtimes.items():
            print(f"{name}: {describe(runtime)}")
        print(f"reference: insightface 2.1 {classic.how}, detection + recognition only, ctx_id=-1")

        contenders = [
            *(
                Contender(name, rgb_images, our_analyze(runtime.service.pipeline))
                for name, runtime in runtimes.items()
            ),
            Contender("insightface det_size 640", bgr_images, classic.analyze),
            Contender(
                f"insightface det_size {INSIGHTFACE_DEFAULT_DET_SIZES}", bgr_images, multi.analyze
            ),
        ]
        ours, reference = contenders[0], contenders[len(runtimes)]
        print(f"\ntiming: 1 warm-up pass + {args.passes} timed passes, interleaved per image")
        for number, contender in enumerate(contenders, start=1):
            print(f"  {number}. {contender.name}")
        measure(contenders, args.passes)
        print("stage split: one more pass, stages timed apart, ours and insightface per image")
        our_split, reference_split = stage_splits(
            default.service.pipeline, classic, rgb_images, bgr_images
        )
        for runtime in runtimes.values():
            runtime.service.gallery.close()

    rows = throughput_rows(contenders, reference)
    disagreements = count_disagreements(ours, reference, paths)
    splits = {
        ours.name: (our_split, sum(ours.faces_per_image)),
        reference.name: (reference_split, sum(reference.faces_per_image)),
    }
    print_report(rows, disagreements, splits, len(paths))
    after = machine_description()
    print(f"load average (1m) {after['load_average_1m_5m'][0]:.2f} at the end")
    if args.json_out:
        results = {
            "machine": machine,
            "machine_after": after,
            "threads": args.threads,
            "images": [str(path) for path in paths],
            "decode_in_timings": False,
            "ours": {name: describe(runtime) for name, runtime in runtimes.items()},
            "reference": classic.how,
            "insightface_default_det_size": INSIGHTFACE_DEFAULT_DET_SIZES,
            "contenders": rows,
            "face_count_disagreements": disagreements,
            "stage_seconds": {ours.name: our_split, reference.name: reference_split},
        }
        write_json(args.json_out, results)


if __name__ == "__main__":
    main()
