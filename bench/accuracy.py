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
import mimetypes
import os
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from app.config import Settings
from app.core.types import FloatArray
from app.main import create_app
from bench.calibration import Calibration, calibrate
from bench.common import (
    add_model_arguments,
    format_table,
    machine_description,
    model_overrides,
    print_machine,
    read_celeba,
    write_json,
)
from bench.lfw import Pair, read_pairs, ten_fold_accuracy

# Photos enrolled per CelebA identity (the first ones by path); the rest are probes.
ENROLL_PER_IDENTITY = 3
# Similarity given to an LFW pair when either image has no detected face: below any
# threshold, so a same pair is always wrong (a different pair is then right).
MISSING_SCORE = -1.0
HTTP_TIMEOUT_S = 300.0
TOP_IMPOSTORS_SHOWN = 5
MISSES_SHOWN = 10


class ServiceError(RuntimeError):
    """The service answered a benchmark request with an unexpected status."""


# --- HTTP -------------------------------------------------------------------------


@contextmanager
def open_client(args: argparse.Namespace) -> Iterator[httpx.Client]:
    """A client for ``--url``, or for the app built in-process on a throw-away gallery."""
    if args.url:
        if model_overrides(args):
            print("note: --detector/--recognizer are ignored with --url (the server decides)")
        headers = {"X-API-Key": args.api_key} if args.api_key else None
        with httpx.Client(base_url=args.url, timeout=HTTP_TIMEOUT_S, headers=headers) as client:
            yield client
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    with tempfile.TemporaryDirectory(prefix="facerec-bench-") as data_dir:
        base = Settings(
            models_dir=args.models_dir, data_dir=Path(data_dir), log_level="WARNING", auth=False
        )
        settings = base.model_copy(update=model_overrides(args))
        with TestClient(create_app(settings)) as client:
            yield client


def upload(path: Path) -> tuple[str, bytes, str]:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, path.read_bytes(), content_type


def checked_json(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    raise ServiceError(
        f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} "
        f"{response.text[:500]}"
    )


def bbox_area(face: dict[str, Any]) -> float:
    x1, y1, x2, y2 = face["bbox"]
    return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


def largest_face(faces: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(faces, key=bbox_area, default=None)


# --- LFW verification -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LfwEmbeddings:
    images: list[str]  # paths relative to lfw/images
    embeddings: FloatArray  # (n, dim); rows of images without a face are zero
    found: NDArray[np.bool_]  # (n,) a face was detected
    seconds: float


def select_pairs(pairs: list[Pair], limit: int | None) -> list[Pair]:
    """All pairs, or about ``limit`` taken evenly from every fold, same and different alike.

    pairs.txt lists each fold's same pairs before its different ones, so its first
    N lines would be one fold of one kind; an even selection keeps a quick run on
    the 10-fold protocol.
    """
    if limit is None or limit >= len(pairs):
        return pairs
    folds = sorted({pair.fold for pair in pairs})
    per_group = max(1, limit // (2 * len(folds)))
    return [
        pair
        for fold in folds
        for same in (True, False)
        for pair in [p for p in pairs if p.fold == fold and p.same is same][:per_group]
    ]


def embed_largest_faces(client: httpx.Client, images_dir: Path, images: list[str]) -> LfwEmbeddings:
    """POST /embed for every image; keep the embedding of its largest face."""
    rows: list[list[float] | None] = []
    start = time.perf_counter()
    for name in tqdm(images, desc="LFW /embed", unit="img", mininterval=2.0):
        body = checked_json(client.post("/embed", files={"image": upload(images_dir / name)}))
        face = largest_face(body["faces"])
        rows.append(face["embedding"] if face else None)
    seconds = time.perf_counter() - start
    dim = next((len(row) for row in rows if row is not None), 1)
    embeddings = np.zeros((len(rows), dim), dtype=np.float32)
    for index, row in enumerate(rows):
        if row is not None:
            embeddings[index] = row
    found = np.array([row is not None for row in rows], dtype=np.bool_)
    return LfwEmbeddings(images=images, embeddings=embeddings, found=found, seconds=seconds)


def pair_scores(
    pairs: Sequence[Pair], lfw: LfwEmbeddings
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Dot-product similarity of every pair, and which pairs lack a face on either side."""
    index = {name: position for position, name in enumerate(lfw.images)}
    first = np.array([index[pair.first] for pair in pairs])
    second = np.array([index[pair.second] for pair in pairs])
    scores = np.einsum("ij,ij->i", lfw.embeddings[first], lfw.embeddings[second])
    missing = ~(lfw.found[first] & lfw.found[second])
    return np.where(missing, MISSING_SCORE, scores).astype(np.float64), missing


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


def print_lfw(summary: dict[str, Any]) -> None:
    print(
        f"\nLFW: {summary['pairs']} pairs, {summary['images']} images "
        f"({summary['images_without_face']} without a face, "
        f"{summary['pairs_missing_face']} pairs affected), "
        f"{summary['images_per_s']:.1f} images/s through /embed"
    )
    print(
        f"10-fold accuracy: {summary['accuracy'] * 100:.2f}% ± {summary['accuracy_std'] * 100:.2f}"
        f"  (best-threshold mean {np.mean(summary['fold_thresholds']):.3f})"
    )
    if summary["pairs_missing_face"]:
        print(
            f"  missing faces scored {MISSING_SCORE}; counting all those pairs wrong: "
            f"{summary['strict_accuracy'] * 100:.2f}%"
        )


def print_calibration(calibration: Calibration, images: Sequence[str]) -> None:
    print(
        f"\nThreshold calibration on LFW: {calibration.images} images with a face, "
        f"{calibration.impostor_pairs:,} different-identity pairs, "
        f"{calibration.genuine_pairs:,} same-identity pairs "
        f"({calibration.genuine_pairs_missing_face} missing a face, counted rejected)"
    )
    rows = [
        (
            f"{p.far_target:.0e}" if p.far_target is not None else "service",
            f"{p.threshold:.4f}",
            f"{p.false_accepts:,}",
            f"{p.far:.2e}",
            f"{p.tar * 100:.2f}%",
        )
        for p in [*calibration.points, calibration.service]
    ]
    print(format_table(("FAR target", "threshold", "false accepts", "FAR", "TAR"), rows))
    unresolved = [
        p.far_target
        for p in calibration.points
        if p.far_target is not None and p.far_target * calibration.impostor_pairs < 1
    ]
    if unresolved:
        print(
            f"note: FAR {', '.join(f'{far:.0e}' for far in unresolved)} is below one pair in "
            f"{calibration.impostor_pairs:,}: the threshold only clears every impostor pair seen"
        )
    print(
        "thresholds are exact float32 values (accept similarity >= threshold); round them up, "
        "not to nearest, when copying them into a manifest"
    )
    print("most similar different-identity pairs (they set the threshold at the smallest FARs):")
    for first, second, similarity in calibration.top_impostors[:TOP_IMPOSTORS_SHOWN]:
        print(f"  {similarity:.4f}  {images[first]}  {images[second]}")


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
            f"LFW 10-fold accuracy   {lfw['accuracy'] * 100:.2f}% ± {lfw['accuracy_std'] * 100:.2f}"
            f"  (images without a face: {lfw['images_without_face']}; "
            f"{lfw['images_per_s']:.1f} images/s via /embed)"
        )
        for point in results["calibration"]["points"]:
            print(
                f"threshold @ FAR {point['far_target']:.0e}  {point['threshold']:.4f}"
                f"  TAR {point['tar'] * 100:.2f}%"
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


def run_lfw(
    client: httpx.Client, lfw_dir: Path, limit: int | None, service_threshold: float
) -> tuple[dict[str, Any], Calibration]:
    pairs = select_pairs(read_pairs(lfw_dir / "pairs.txt"), limit)
    images = sorted({name for pair in pairs for name in (pair.first, pair.second)})
    lfw = embed_largest_faces(client, lfw_dir / "images", images)
    scores, missing = pair_scores(pairs, lfw)
    same = np.array([pair.same for pair in pairs], dtype=np.bool_)
    folds = np.array([pair.fold for pair in pairs], dtype=np.int64)
    if np.unique(folds).size < 2:
        raise SystemExit("--lfw-limit too small: the 10-fold protocol needs pairs from 2 folds")
    mean, std, thresholds = ten_fold_accuracy(scores, same, folds)
    summary = {
        "pairs": len(pairs),
        "images": len(images),
        "images_without_face": int(np.count_nonzero(~lfw.found)),
        "images_without_face_list": [n for n, ok in zip(images, lfw.found, strict=True) if not ok],
        "pairs_missing_face": int(np.count_nonzero(missing)),
        "accuracy": mean,
        "accuracy_std": std,
        "strict_accuracy": strict_accuracy(scores, same, folds, missing, thresholds),
        "fold_thresholds": thresholds,
        "seconds": lfw.seconds,
        "images_per_s": len(images) / lfw.seconds,
    }
    print_lfw(summary)
    identities = [name.split("/")[0] for name in images]  # LFW: the folder is the person
    calibration = calibrate(lfw.embeddings, lfw.found, identities, service_threshold)
    print_calibration(calibration, images)
    return summary, calibration


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
    with open_client(args) as client:
        ready = checked_json(client.get("/ready"))
        service_threshold = float(ready["threshold"])
        results["models"] = {
            "detector": ready["detector"]["model_id"],
            "recognizer": ready["recognizer"]["model_id"],
            "service_threshold": service_threshold,
        }
        print(
            f"service: {'in-process' if not args.url else args.url}, detector "
            f"{ready['detector']['model_id']}, recognizer {ready['recognizer']['model_id']}, "
            f"threshold {service_threshold:.3f}"
        )
        if not args.skip_lfw:
            lfw, calibration = run_lfw(
                client, args.data_root / "lfw", args.lfw_limit, service_threshold
            )
            results["lfw"] = lfw
            results["calibration"] = asdict(calibration)
        if not args.skip_celeba:
            collection = f"bench-celeba-{int(time.time())}"
            celeba = run_celeba(client, args.data_root / "celeba", collection, service_threshold)
            print_celeba(celeba)
            results["celeba"] = {**asdict(celeba), "rank1": celeba.rank1}
            if args.url:  # leave a shared server's gallery as we found it
                identities = {row.identity for row in read_celeba(args.data_root / "celeba")}
                delete_subjects(client, collection, sorted(identities))
        if not args.skip_cfp:
            from bench.closeups import delete_cfp_subjects, print_cfp, run_cfp

            collection = f"bench-cfp-{int(time.time())}"
            cfp_dir = args.data_root / "cfp"
            cfp = run_cfp(client, cfp_dir, collection, args.cfp_identities)
            print_cfp(cfp)
            results["cfp"] = {**asdict(cfp), "rank1": cfp.rank1}
            if args.url:
                delete_cfp_subjects(client, collection, cfp, cfp_dir)
    results["machine_after"] = machine_description()
    print_summary(results)
    if args.json_out:
        write_json(args.json_out, results)


if __name__ == "__main__":
    main()
