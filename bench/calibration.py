"""Verification thresholds of the service's recognizers, measured through ``POST /embed``
on LFW, and the recognizer manifests' ``thresholds`` written from them.

Run from the repository root::

    python -m bench.calibration                          # the default recognizer, report only
    python -m bench.calibration --lfw-limit 200          # the quick sample the tests recheck
    python -m bench.calibration --recognizer w600k_mbf_int8 --recognizer w600k_mbf_int8_fast \\
        --int8-as-is --write-manifests                   # what the shipped manifests record

Every image of LFW View 2 goes once to each recognizer's service (in-process apps, or
``--url``); the embedding of its largest face is kept. Then, per recognizer: the 10-fold
LFW accuracy, and thresholds at fixed false-accept rates over all different-identity
pairs of the images, in-sample and held out by identity folds (``training.evaluation``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.inference.catalog import resolve_manifest
from app.inference.manifest import ModelManifest, load_manifest
from bench.common import (
    REPO_ROOT,
    default_data_root,
    default_models_dir,
    format_table,
    machine_description,
    print_machine,
    write_json,
)
from bench.lfw import LfwEmbeddings, embed_largest_faces, save_embeddings
from bench.service import Service, open_services
from training.evaluation import (
    CALIBRATION_FARS,
    HELD_OUT_FOLDS,
    Calibration,
    LfwPair,
    calibrate,
    far_key,
    lfw_accuracy,
    lfw_identity,
    pair_images,
    read_lfw_pairs,
    select_pairs,
)

# The default FAR of a manifest's ``match`` threshold when the manifest names none.
DEFAULT_MATCH_FAR = 1e-5
# The stale-threshold check (tests/bench): the images of this many LFW pairs, taken evenly
# from the folds (--lfw-limit), recalibrated at these FARs.
CHECK_PAIRS = 200
CHECK_FARS = (1e-2, 1e-3)
MANIFESTS_DIR = REPO_ROOT / "models" / "manifests"
TOP_IMPOSTORS_SHOWN = 5
OPEN_SET_NOTE = (
    "For open-set identification the chance that an unknown face matches someone grows "
    "with gallery size (about N x FAR for N enrolled faces): use a by_far threshold of a "
    "smaller FAR for large galleries."
)
HELD_OUT_SPLIT = (
    "identities split by sha256(name) mod {folds}; per fold, the threshold chosen on the "
    "pairs of the other folds' identities, FAR and TAR measured on the pairs within the fold "
    "(pairs across folds unused); far is pooled over the folds"
)


@dataclass(frozen=True, slots=True)
class Contender:
    label: str
    recognizer: str | None  # catalog name or manifest path; None: the service's default
    writable: Path | None  # the shipped manifest its thresholds may be written to


@dataclass(frozen=True, slots=True)
class Result:
    contender: Contender
    service: Service
    lfw: LfwEmbeddings
    accuracy: dict[str, Any]
    calibration: Calibration
    check: dict[str, Any] | None  # the sample's thresholds, when the sample was embedded


# --- contenders -------------------------------------------------------------------------------


def manifest_file(recognizer: str) -> Path | None:
    """Where ``--write-manifests`` writes a recognizer's thresholds: a manifest path as
    given, a catalog name's file when it is one of the repository's manifests."""
    if recognizer.endswith(".json"):
        return Path(recognizer)
    _, path = resolve_manifest(recognizer)
    return path if path.resolve().parent == MANIFESTS_DIR.resolve() else None


def int8_as_is(recognizer: str, scratch_dir: Path) -> Path | None:
    """A copy of a dequantizing manifest that runs its INT8 file as is (one face per run:
    dynamic quantisation scales activations over the whole batch), or None."""
    manifest, _ = resolve_manifest(recognizer)
    if not manifest.import_steps.dequantize:
        return None
    variant = manifest.model_copy(
        update={
            "name": f"{manifest.name}_int8_as_is",
            "import_steps": manifest.import_steps.model_copy(update={"dequantize": False}),
            "input": manifest.input.model_copy(update={"max_batch": 1}),
        }
    )
    path = scratch_dir / f"{variant.name}.json"
    path.write_text(variant.model_dump_json(indent=2), encoding="utf-8")
    return path


def contenders(args: argparse.Namespace, scratch_dir: Path) -> list[Contender]:
    chosen = args.recognizer or [None]
    found = [
        Contender(name or "default", name, manifest_file(name) if name else None) for name in chosen
    ]
    if args.int8_as_is:
        variants = [(name, int8_as_is(name, scratch_dir)) for name in chosen if name]
        found += [Contender(f"{name} (INT8 as is)", str(p), None) for name, p in variants if p]
    return found


# --- measuring ----------------------------------------------------------------------------


def sample_check(pairs: Sequence[LfwPair], lfw: LfwEmbeddings) -> dict[str, Any] | None:
    """In-sample thresholds of the check sample (the images of ``CHECK_PAIRS`` pairs), when
    they were all embedded: what tests/bench recalibrates to catch a stale manifest."""
    sample = pair_images(select_pairs(pairs, CHECK_PAIRS))
    if not set(sample) <= set(lfw.images):
        return None
    rows = lfw.subset(sample)
    identities = [lfw_identity(name) for name in sample]
    calibration = calibrate(rows.embeddings, rows.found, identities, fars=CHECK_FARS, folds=None)
    return {
        "lfw_limit": CHECK_PAIRS,
        "images": len(sample),
        "impostor_pairs": calibration.impostor_pairs,
        "by_far": {p.label: p.threshold for p in calibration.in_sample},
    }


def measure(
    services: Sequence[Service],
    chosen: Sequence[Contender],
    data_root: Path,
    limit: int | None,
    folds: int,
) -> list[Result]:
    all_pairs = read_lfw_pairs(data_root / "lfw" / "pairs.txt")
    pairs = select_pairs(all_pairs, limit)
    images = pair_images(pairs)
    print(f"LFW: {len(pairs)} pairs, {len(images)} images, {len(services)} service(s)")
    embedded = embed_largest_faces(services, data_root / "lfw" / "images", images)
    identities = [lfw_identity(name) for name in images]
    results = []
    for contender, service, lfw in zip(chosen, services, embedded, strict=True):
        calibration = calibrate(
            lfw.embeddings,
            lfw.found,
            identities,
            fars=CALIBRATION_FARS,
            folds=folds,
            fixed_thresholds=(service.threshold,),
        )
        results.append(
            Result(
                contender=contender,
                service=service,
                lfw=lfw,
                accuracy=lfw_accuracy(pairs, lfw.as_mapping()),
                calibration=calibration,
                check=sample_check(all_pairs, lfw),
            )
        )
    return results


# --- reporting --------------------------------------------------------------------------------


def calibration_rows(calibration: Calibration) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for point, held in zip(calibration.in_sample, calibration.held_out, strict=True):
        note = "" if calibration.resolvable(held.far_target) else " (<1 pair)"
        rows.append(
            (
                f"{held.far_target:.0e}{note}",
                f"{point.threshold:.4f}",
                f"{point.false_accepts:,}",
                f"{point.tar * 100:.2f}%",
                " / ".join(f"{t:.4f}" for t in held.thresholds),
                f"{held.far:.2e}",
                " / ".join(f"{f:.1e}" for f in held.fold_fars),
                f"{held.tar * 100:.2f}%",
            )
        )
    for fixed in calibration.fixed:
        rows.append(
            (
                "service",
                f"{fixed.threshold:.4f}",
                f"{fixed.false_accepts:,}",
                f"{fixed.tar * 100:.2f}%",
                "",
                f"(in-sample FAR {fixed.far:.2e})",
                "",
                "",
            )
        )
    return rows


def print_result(result: Result) -> None:
    calibration, accuracy = result.calibration, result.accuracy
    print(f"\n== {result.contender.label}: {result.service.recognizer_id}")
    print(
        f"LFW 10-fold accuracy {accuracy['accuracy'] * 100:.2f}% ± {accuracy['std'] * 100:.2f} "
        f"({accuracy['pairs']} pairs, {accuracy['pairs_missing_face']} missing a face; "
        f"{calibration.images_without_face} images without a face)"
    )
    print(
        f"calibration: {calibration.images:,} images with a face of {calibration.identities:,} "
        f"identities, {calibration.impostor_pairs:,} different-identity pairs, "
        f"{calibration.genuine_pairs:,} same-identity pairs "
        f"({calibration.genuine_pairs_missing_face} missing a face, counted rejected); "
        f"held out over {calibration.folds} identity folds"
    )
    print(
        format_table(
            (
                "FAR",
                "threshold",
                "false accepts",
                "TAR",
                "held-out thresholds",
                "held-out FAR",
                "per fold",
                "held-out TAR",
            ),
            calibration_rows(calibration),
        )
    )
    print("most similar different-identity pairs (they set the smallest FARs' thresholds):")
    for first, second, similarity in calibration.top_impostors[:TOP_IMPOSTORS_SHOWN]:
        print(f"  {similarity:.4f}  {result.lfw.images[first]}  {result.lfw.images[second]}")


def print_summary(results: Sequence[Result], match_far: float) -> None:
    first = results[0].lfw.seconds or 1.0
    rows = []
    for result in results:
        point = result.calibration.point(match_far)
        held = next(h for h in result.calibration.held_out if h.far_target == match_far)
        rows.append(
            (
                result.contender.label,
                f"{result.accuracy['accuracy'] * 100:.2f}% ± {result.accuracy['std'] * 100:.2f}",
                f"{point.threshold:.4f}",
                f"{point.tar * 100:.2f}%",
                f"{held.far:.2e}",
                f"{held.tar * 100:.2f}%",
                f"{len(result.lfw.images) / max(result.lfw.seconds, 1e-9):.1f}",
                f"{result.lfw.seconds / first:.2f}x",
            )
        )
    key = far_key(match_far)
    print("\n=== summary (same images, services interleaved per image) ===")
    print(
        format_table(
            (
                "recognizer",
                "LFW 10-fold",
                f"threshold @{key}",
                "TAR",
                "held-out FAR",
                "held-out TAR",
                "images/s",
                "time vs first",
            ),
            rows,
        )
    )


def result_json(result: Result) -> dict[str, Any]:
    calibration = result.calibration
    return {
        "label": result.contender.label,
        "detector": result.service.detector_id,
        "recognizer": result.service.recognizer_id,
        "service_threshold": result.service.threshold,
        "images": len(result.lfw.images),
        "seconds": result.lfw.seconds,
        "lfw": result.accuracy,
        "calibration": {
            "images": calibration.images,
            "images_without_face": calibration.images_without_face,
            "identities": calibration.identities,
            "impostor_pairs": calibration.impostor_pairs,
            "genuine_pairs": calibration.genuine_pairs,
            "in_sample": {
                p.label: {"threshold": p.threshold, "false_accepts": p.false_accepts, "tar": p.tar}
                for p in calibration.in_sample
            },
            "held_out": {
                far_key(h.far_target): {
                    "thresholds": h.thresholds,
                    "far": h.far,
                    "fold_fars": h.fold_fars,
                    "tar": h.tar,
                }
                for h in calibration.held_out
            },
            "service": [
                {"threshold": p.threshold, "false_accepts": p.false_accepts, "tar": p.tar}
                for p in calibration.fixed
            ],
        },
        "check": result.check,
    }


# --- manifests ------------------------------------------------------------------------------


def source_commit() -> str | None:
    """The repository's commit, with ``-dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def thresholds_record(
    result: Result, match_far: float, command: str, when: datetime, commit: str | None
) -> dict[str, Any]:
    """The manifest's ``thresholds`` from one recognizer's result."""
    calibration, check = result.calibration, result.check
    if check is None:
        raise SystemExit("--write-manifests needs the check sample: run without --lfw-limit")
    by_far = calibration.by_far()
    key = far_key(match_far)
    if key not in by_far:
        raise SystemExit(f"FAR {match_far:g} is not resolvable on these pairs: {sorted(by_far)}")
    return {
        "match": by_far[key],
        "far": match_far,
        "calibration": {
            "command": command,
            "date": when.strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit,
            "data": (
                f"LFW View 2: the {len(result.lfw.images):,} images of the "
                f"{result.accuracy['pairs']:,} pairs of lfw/pairs.txt, "
                f"{calibration.identities:,} identities (the folder names); the largest face "
                "of each image through POST /embed"
            ),
            "detector": result.service.detector_id,
            "recognizer": result.service.recognizer_id,
            "images": calibration.images,
            "images_without_face": calibration.images_without_face,
            "impostor_pairs": calibration.impostor_pairs,
            "genuine_pairs": calibration.genuine_pairs,
            "lfw_accuracy": result.accuracy["accuracy"],
            "in_sample": {
                p.label: {"threshold": round(p.threshold, 6), "far": p.far, "tar": round(p.tar, 6)}
                for p in calibration.in_sample
                if p.label in by_far
            },
            "held_out": {
                "folds": calibration.folds,
                "split": HELD_OUT_SPLIT.format(folds=calibration.folds),
                "points": {
                    far_key(h.far_target): {
                        "far": h.far,
                        "fold_fars": h.fold_fars,
                        "tar": round(h.tar, 6),
                    }
                    for h in calibration.held_out
                    if far_key(h.far_target) in by_far
                },
            },
            "check": check,
            "note": OPEN_SET_NOTE,
        },
        "by_far": by_far,
    }


def write_manifest(path: Path, thresholds: dict[str, Any], recognizer_id: str) -> None:
    """Replace the manifest's ``thresholds``; refuse when it is not the measured model.
    The result is validated before the file is written."""
    current = load_manifest(path)
    if current.model_id != recognizer_id:
        raise SystemExit(f"{path} describes {current.model_id}, not {recognizer_id}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["thresholds"] = thresholds
    updated = ModelManifest.model_validate(raw)
    path.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert updated.thresholds is not None
    print(f"thresholds written to {path} (match {updated.thresholds.match})")


def match_far_of(contender: Contender, fallback: float) -> float:
    if contender.recognizer is None:
        return fallback
    manifest, _ = resolve_manifest(contender.recognizer)
    return manifest.thresholds.far if manifest.thresholds and manifest.thresholds.far else fallback


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=default_models_dir(),
        help="folder with the .onnx files (default: $FACEREC_MODELS_DIR or ../shared/models)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=default_data_root(),
        help="folder with lfw/ (default: $FACEREC_DATA_ROOT or ../shared/data)",
    )
    parser.add_argument("--detector", help="detector catalog name or manifest path")
    parser.add_argument(
        "--recognizer",
        action="append",
        help="catalog name or manifest path; repeat to measure several side by side",
    )
    parser.add_argument(
        "--precision",
        choices=("f32", "auto", "bf16"),
        default="f32",
        help="OpenVINO precision of the in-process services (default f32: the reference "
        "arithmetic every CPU reproduces; bf16 moves thresholds by ~1e-3, docs/performance.md)",
    )
    parser.add_argument(
        "--int8-as-is",
        action="store_true",
        help="also each dequantizing recognizer with its INT8 file run as is (reported only)",
    )
    parser.add_argument("--url", help="measure a running server instead (http://host:port)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FACEREC_API_KEY"),
        help="X-API-Key for --url (default: $FACEREC_API_KEY)",
    )
    parser.add_argument(
        "--lfw-limit", type=int, help="about N pairs, taken evenly from every fold (quick run)"
    )
    parser.add_argument(
        "--folds", type=int, default=HELD_OUT_FOLDS, help="identity folds of the held-out estimate"
    )
    parser.add_argument(
        "--far",
        type=float,
        help="FAR of the match threshold (default: the manifest's far, else 1e-5)",
    )
    parser.add_argument(
        "--write-manifests",
        action="store_true",
        help="write each recognizer's thresholds into its manifest (a catalog name's "
        "models/manifests/<name>.json, or the manifest path given)",
    )
    parser.add_argument("--save-embeddings", type=Path, help="folder for each contender's .npz")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.url and (args.recognizer or args.int8_as_is or args.write_manifests):
        parser.error(
            "--url measures the server's own recognizer: no --recognizer/--int8-as-is/"
            "--write-manifests"
        )
    return args


def main(argv: Sequence[str] | None = None) -> list[Result]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started, commit = datetime.now(UTC), source_commit()  # the code that runs: at the start
    machine = machine_description()
    print_machine(machine)
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as scratch:
        chosen = contenders(args, Path(scratch))
        with open_services(
            url=args.url,
            api_key=args.api_key,
            models_dir=args.models_dir,
            detector=args.detector,
            recognizers=[(c.label, c.recognizer) for c in chosen],
            precision=args.precision,
        ) as services:
            if args.url:
                chosen = [Contender(args.url, None, None)]
            for contender, service in zip(chosen, services, strict=True):
                print(f"{contender.label}: {service.detector_id} + {service.recognizer_id}")
            results = measure(services, chosen, args.data_root, args.lfw_limit, args.folds)
    for result in results:
        print_result(result)
    print_summary(results, args.far or match_far_of(chosen[0], DEFAULT_MATCH_FAR))
    after = machine_description()
    print(
        f"load average (1m) {machine['load_average_1m_5m'][0]:.2f} at start, "
        f"{after['load_average_1m_5m'][0]:.2f} at end, {machine['cores']} cores"
    )
    if args.save_embeddings:
        for number, result in enumerate(results):
            save_embeddings(
                args.save_embeddings / f"{number}.npz", result.contender.label, result.lfw
            )
    if args.write_manifests:
        command = shlex.join(["python", "-m", "bench.calibration", *argv])
        for result in results:
            path = result.contender.writable
            if path is None:
                continue
            far = args.far or match_far_of(result.contender, DEFAULT_MATCH_FAR)
            thresholds = thresholds_record(result, far, command, started, commit)
            write_manifest(path, thresholds, result.service.recognizer_id)
    if args.json_out:
        write_json(
            args.json_out,
            {
                "machine": machine,
                "machine_after": after,
                "results": [result_json(result) for result in results],
            },
        )
    return results


if __name__ == "__main__":
    main()
