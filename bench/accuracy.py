"""Accuracy through the service's HTTP API: LFW verification, threshold calibration, CelebA rank-1.

Run from the repository root::

    python -m bench.accuracy                                 # app built in-process
    python -m bench.accuracy --url http://localhost:8000     # a running server
    python -m bench.accuracy --lfw-limit 600 --skip-celeba   # quick look

Everything goes through the public endpoints (/embed, /enroll, /identify, /ready),
so the figures include decoding, detection, alignment and the gallery exactly as
clients see them.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from bench.calibration import Contender, Result, measure, print_result, result_json
from bench.common import (
    add_model_arguments,
    machine_description,
    model_overrides,
    print_machine,
    read_celeba,
    write_json,
)
from bench.service import Service, checked_json, largest_face, open_services, upload
from training.evaluation import (
    HELD_OUT_FOLDS,
    lfw_pair_scores,
    read_lfw_pairs,
    select_pairs,
    ten_fold_accuracy,
)

# Photos enrolled per CelebA identity (the first ones by path); the rest are probes.
ENROLL_PER_IDENTITY = 3
MISSES_SHOWN = 10


# --- LFW verification -------------------------------------------------------------


def strict_accuracy(
    scores: NDArray[np.float64],
    same: NDArray[np.bool_],
    folds: NDArray[np.int64],
    missing: NDArray[np.bool_],
    thresholds: list[float],
) -> float:
    """Ten-fold accuracy with every pair that lacks a face counted wrong, whatever its kind."""
    accuracies = []
    for fold, threshold in zip(np.unique(folds), thresholds, strict=True):
        test = folds == fold
        correct = ((scores[test] >= threshold) == same[test]) & ~missing[test]
        accuracies.append(float(np.mean(correct)))
    return float(np.mean(accuracies))


def run_lfw(service: Service, data_root: Path, limit: int | None) -> tuple[Result, float]:
    """LFW 10-fold accuracy and the threshold calibration (bench.calibration), and the
    accuracy with every pair missing a face counted wrong."""
    (result,) = measure(
        [service], [Contender(service.label, None, None)], data_root, limit, HELD_OUT_FOLDS
    )
    print_result(result)
    pairs = select_pairs(read_lfw_pairs(data_root / "lfw" / "pairs.txt"), limit)
    scores, same, folds, missing = lfw_pair_scores(pairs, result.lfw.as_mapping())
    thresholds = ten_fold_accuracy(scores, same, folds).thresholds
    strict = strict_accuracy(scores, same, folds, missing, thresholds)
    if missing.any():
        print(f"counting every pair that lacks a face wrong: {strict * 100:.2f}%")
    return result, strict


# --- CelebA identification ------------------------------------------------------------


@dataclass(slots=True)
class CelebaResult:
    collection: str
    identities: int = 0
    enrolled_identities: int = 0
    enrolled_faces: int = 0
    rejected_enrollment_photos: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    correct: int = 0
    probes_without_face: int = 0
    probes_of_unenrolled: int = 0
    correct_at_service_threshold: int = 0
    service_threshold: float = math.nan
    seconds: float = 0.0
    misses: list[dict[str, object]] = field(default_factory=list)  # probe, expected, best

    @property
    def rank1(self) -> float:
        return self.correct / self.probes if self.probes else math.nan


def enroll_identity(
    client: httpx.Client, collection: str, identity: str, photos: Sequence[Path]
) -> tuple[int, list[str]]:
    """POST /enroll with the photos; faces enrolled, and the codes of the rejected photos."""
    response = client.post(
        "/enroll",
        params={"collection": collection},
        data={"subject": identity, "face_policy": "largest"},
        files=[("images", upload(photo)) for photo in photos],
    )
    if response.status_code == 422:  # no photo usable: details list every rejection
        rejected = response.json().get("details", {}).get("rejected")
        if rejected is None:
            checked_json(response)
        return 0, [item["code"] for item in rejected]
    body = checked_json(response)
    return len(body["faces"]), [item["code"] for item in body["rejected"]]


def identify_best(client: httpx.Client, collection: str, photo: Path) -> tuple[str, float] | None:
    """Best candidate (subject, similarity) of the photo's largest face; None: no face."""
    body = checked_json(
        client.post(
            "/identify",
            params={"collection": collection},
            data={"top_k": "1", "threshold": "-1"},
            files={"image": upload(photo)},
        )
    )
    face = largest_face(body["faces"])
    if face is None or not face["candidates"]:
        return None
    best = face["candidates"][0]
    return str(best["subject"]), float(best["similarity"])


def run_celeba(
    client: httpx.Client, celeba_dir: Path, collection: str, service_threshold: float
) -> CelebaResult:
    photos_by_identity: dict[str, list[Path]] = defaultdict(list)
    for row in read_celeba(celeba_dir):
        photos_by_identity[row.identity].append(row.path)
    result = CelebaResult(collection=collection, service_threshold=service_threshold)
    result.identities = len(photos_by_identity)
    rejected: Counter[str] = Counter()
    enrolled: set[str] = set()
    start = time.perf_counter()
    for identity, photos in tqdm(
        photos_by_identity.items(), desc="CelebA /enroll", unit="id", mininterval=2.0
    ):
        faces, codes = enroll_identity(client, collection, identity, photos[:ENROLL_PER_IDENTITY])
        rejected.update(codes)
        result.enrolled_faces += faces
        if faces:
            enrolled.add(identity)
    probes = [
        (identity, photo)
        for identity, photos in photos_by_identity.items()
        for photo in photos[ENROLL_PER_IDENTITY:]
    ]
    for identity, photo in tqdm(probes, desc="CelebA /identify", unit="img", mininterval=2.0):
        best = identify_best(client, collection, photo)
        name = str(photo.relative_to(celeba_dir))
        result.probes += 1
        result.probes_of_unenrolled += identity not in enrolled
        if best is None:
            result.probes_without_face += 1
            result.misses.append({"probe": name, "expected": identity, "best": None})
            continue
        subject, similarity = best
        if subject == identity:
            result.correct += 1
            result.correct_at_service_threshold += similarity >= service_threshold
        else:
            result.misses.append(
                {
                    "probe": name,
                    "expected": identity,
                    "best": subject,
                    "similarity": similarity,
                }
            )
    result.seconds = time.perf_counter() - start
    result.enrolled_identities = len(enrolled)
    result.rejected_enrollment_photos = dict(rejected)
    return result


def delete_subjects(client: httpx.Client, collection: str, subjects: Sequence[str]) -> None:
    for subject in subjects:
        response = client.delete(f"/subjects/{subject}", params={"collection": collection})
        if response.status_code not in {200, 404}:
            checked_json(response)


# --- reporting ------------------------------------------------------------------------


def print_celeba(result: CelebaResult) -> None:
    print(
        f"\nCelebA: {result.identities} identities, first {ENROLL_PER_IDENTITY} photos enrolled "
        f"({result.enrolled_faces} faces, {result.enrolled_identities} identities enrolled; "
        f"rejected photos: {result.rejected_enrollment_photos or 'none'})"
    )
    print(
        f"rank-1: {result.rank1 * 100:.2f}% ({result.correct}/{result.probes} probes; "
        f"{result.probes_without_face} without a face and {result.probes_of_unenrolled} of "
        "unenrolled identities count as errors)"
    )
    print(
        f"rank-1 and similarity >= service threshold {result.service_threshold:.3f}: "
        f"{result.correct_at_service_threshold / max(result.probes, 1) * 100:.2f}%"
    )
    for miss in result.misses[:MISSES_SHOWN]:
        best = f"best {miss['best']} ({miss['similarity']:.3f})" if miss["best"] else "no face"
        print(f"  miss: {miss['probe']} (identity {miss['expected']}): {best}")


def print_summary(results: dict[str, Any]) -> None:
    models = results["models"]
    print("\n=== summary ===")
    print(f"models: {models['detector']} + {models['recognizer']}")
    print(f"service threshold: {models['service_threshold']:.4f}")
    if "lfw" in results:
        lfw = results["lfw"]
        print(
            f"LFW 10-fold accuracy   {lfw['lfw']['accuracy'] * 100:.2f}% ± "
            f"{lfw['lfw']['std'] * 100:.2f}  (images without a face: "
            f"{lfw['calibration']['images_without_face']}; "
            f"{lfw['images'] / max(lfw['seconds'], 1e-9):.1f} images/s via /embed)"
        )
        for key, point in lfw["calibration"]["in_sample"].items():
            held = lfw["calibration"]["held_out"][key]
            print(
                f"threshold @ FAR {key:<5} {point['threshold']:.4f}  TAR {point['tar'] * 100:.2f}%"
                f"  held-out FAR {held['far']:.1e}, TAR {held['tar'] * 100:.2f}%"
            )
    if "celeba" in results:
        celeba = results["celeba"]
        rejected = sum(celeba["rejected_enrollment_photos"].values())
        print(
            f"CelebA rank-1          {celeba['rank1'] * 100:.2f}%"
            f"  ({celeba['correct']}/{celeba['probes']}; probes without a face: "
            f"{celeba['probes_without_face']}; enrollment photos rejected: {rejected})"
        )
    if "cfp" in results:
        cfp = results["cfp"]
        print(
            f"CFP close-ups rank-1   {cfp['rank1'] * 100:.2f}%  ({cfp['correct']}/{cfp['probes']}; "
            f"{cfp['identities']} identities; enrollments refused: "
            f"{len(cfp['refused_enrollments'])}; probes without a face: "
            f"{cfp['probes_without_face']})"
        )
    before, after = results["machine"], results["machine_after"]
    print(
        f"load average (1m) {before['load_average_1m_5m'][0]:.2f} at start, "
        f"{after['load_average_1m_5m'][0]:.2f} at end, {before['cores']} cores"
    )


# --- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--url", help="benchmark a running server instead (http://host:port)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FACEREC_API_KEY"),
        help="X-API-Key for --url (default: $FACEREC_API_KEY): a key scoped to '*'",
    )
    parser.add_argument(
        "--lfw-limit",
        type=int,
        help="use about N pairs, taken evenly from every fold (quick run)",
    )
    parser.add_argument("--skip-lfw", action="store_true", help="no LFW, no calibration")
    parser.add_argument("--skip-celeba", action="store_true", help="no CelebA identification")
    parser.add_argument("--skip-cfp", action="store_true", help="no CFP close-up identification")
    parser.add_argument(
        "--cfp-identities",
        type=int,
        default=450,
        help="CFP identities in the close-up gallery (default 450, all; 50 for a quick look)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_description()
    print_machine(machine)
    results: dict[str, Any] = {"machine": machine, "url": args.url}
    if args.url and model_overrides(args):
        print("note: --detector/--recognizer are ignored with --url (the server decides)")
    with open_services(
        url=args.url,
        api_key=args.api_key,
        models_dir=args.models_dir,
        detector=args.detector,
        recognizers=[("in-process", args.recognizer)],
    ) as (service,):
        results["models"] = {
            "detector": service.detector_id,
            "recognizer": service.recognizer_id,
            "service_threshold": service.threshold,
        }
        print(
            f"service: {'in-process' if not args.url else args.url}, detector "
            f"{service.detector_id}, recognizer {service.recognizer_id}, "
            f"threshold {service.threshold:.3f}"
        )
        if not args.skip_lfw:
            lfw, strict = run_lfw(service, args.data_root, args.lfw_limit)
            results["lfw"] = {**result_json(lfw), "strict_accuracy": strict}
        if not args.skip_celeba:
            collection = f"bench-celeba-{int(time.time())}"
            celeba = run_celeba(
                service.client, args.data_root / "celeba", collection, service.threshold
            )
            print_celeba(celeba)
            results["celeba"] = {**asdict(celeba), "rank1": celeba.rank1}
            if args.url:  # leave a shared server's gallery as we found it
                identities = {row.identity for row in read_celeba(args.data_root / "celeba")}
                delete_subjects(service.client, collection, sorted(identities))
        if not args.skip_cfp:
            from bench.closeups import delete_cfp_subjects, print_cfp, run_cfp

            collection = f"bench-cfp-{int(time.time())}"
            cfp_dir = args.data_root / "cfp"
            cfp = run_cfp(service.client, cfp_dir, collection, args.cfp_identities)
            print_cfp(cfp)
            results["cfp"] = {**asdict(cfp), "rank1": cfp.rank1}
            if args.url:
                delete_cfp_subjects(service.client, collection, cfp, cfp_dir)
    results["machine_after"] = machine_description()
    print_summary(results)
    if args.json_out:
        write_json(args.json_out, results)


if __name__ == "__main__":
    main()
