"""The recognizer's impostor similarity tail, measured far into the tail on every
different-identity pair of ../shared/data (LFW + CFP + CelebA), and a held-out check of
the open-set thresholds derived from it; ``--write-manifest`` records the tail in the
recognizer manifest's ``impostor_tail`` (what ``app.core.openset`` derives from).

Run from the repository root::

    python -m bench.impostor_tail --cache /tmp/facerec-faces        # report only
    python -m bench.impostor_tail --cache /tmp/facerec-faces --write-manifest

Each image's largest face goes once through ``POST /embed`` of an in-process service
(cached per data set in ``--cache``; ``bench.faces``). Pairs are impostor pairs when their
identities differ within one data set: names do not link data sets (``bench.faces``).
Similarities are computed in row blocks (``training.evaluation.scores.BLOCK_ROWS``):
memory stays small.

The check splits identities by sha256 in four: the tail is measured on two quarters (all
data sets), a gallery is enrolled from the third (LFW: all faces of each subject but
one), the fourth (LFW) are strangers. For gallery sizes up to all of the third quarter:
the FPIR of the strangers (share whose best gallery face reaches the threshold) at
thresholds derived with N = faces and with N = subjects, and the FNIR of the held-back
faces of enrolled subjects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.core.openset import ImpostorTail, TailPoint, derive_threshold
from app.inference.catalog import resolve_manifest
from app.inference.manifest import ModelManifest, load_manifest
from bench.calibration import source_commit
from bench.common import (
    REPO_ROOT,
    add_model_arguments,
    format_table,
    machine_description,
    print_machine,
    write_json,
)
from bench.faces import CHECK_DATASET, DATASETS, FaceSet, embed_faces
from bench.service import open_services
from training.evaluation.scores import BLOCK_ROWS, identity_codes
from training.evaluation.tail import (
    DEFAULT_FIT_FAR,
    MIN_EXCEEDANCES,
    MeasuredTail,
    TailAccumulator,
    keep_for,
)

MANIFESTS_DIR = REPO_ROOT / "models" / "manifests"
CHECK_PARTS = 4
CHECK_FPIRS = (1e-1, 3e-2, 1e-2, 3e-3)
CHECK_SIZES = (100, 300, 1000, 3000)
SHALLOWEST_FAR = 1e-2


@dataclass(frozen=True, slots=True)
class Pairing:
    """Who pairs with whom: identity codes, and a data set per row (rows of different
    data sets never pair)."""

    codes: NDArray[np.int64]
    groups: NDArray[np.int64]

    @classmethod
    def of(cls, faces: FaceSet) -> Pairing:
        return cls(identity_codes(faces.identities), identity_codes(faces.datasets.tolist()))


def identity_parts(identities: Sequence[str], parts: int) -> NDArray[np.int64]:
    """sha256(identity) mod ``parts`` per row: a split that does not depend on the order."""
    part_of = {
        identity: int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") % parts
        for identity in set(identities)
    }
    return np.array([part_of[identity] for identity in identities], np.int64)


def measure_tail(
    faces: FaceSet, pairing: Pairing, rows: NDArray[np.int64], fit_far: float
) -> MeasuredTail:
    """The impostor tail of every pairable pair among ``rows``, streamed block by block."""
    embeddings = faces.embeddings[rows]
    codes, groups = pairing.codes[rows], pairing.groups[rows]
    same_group_pairs = sum(int(c) * (int(c) - 1) // 2 for c in np.bincount(groups))
    accumulator = TailAccumulator(keep=keep_for(same_group_pairs, SHALLOWEST_FAR))
    n = len(rows)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        similarities = embeddings[start:stop] @ embeddings[start:].T
        later = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
        pairable = (codes[start:stop, None] != codes[None, start:]) & (
            groups[start:stop, None] == groups[None, start:]
        )
        accumulator.add(similarities[later & pairable])
    return accumulator.measure(fit_far=fit_far, min_exceedances=MIN_EXCEEDANCES)


def as_tail(measured: MeasuredTail) -> ImpostorTail:
    points = tuple(TailPoint(q.far, q.threshold) for q in measured.quantiles)
    return ImpostorTail(points=points, scale=measured.scale, pairs=measured.pairs)


# --- the held-out check ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckSets:
    gallery: NDArray[np.int64]  # rows enrolled
    mated: NDArray[np.int64]  # held-back rows of enrolled subjects
    strangers: NDArray[np.int64]


def check_sets(faces: FaceSet, parts: NDArray[np.int64], named: NDArray[np.bool_]) -> CheckSets:
    """Gallery (part 2, all faces but the last of a subject with several), its held-back
    faces, and strangers (part 3), of the rows in ``named`` (one data set: strangers must
    be strangers)."""
    identities = np.array(faces.identities)
    gallery_rows = np.flatnonzero((parts == 2) & named)
    last_of: dict[str, int] = {}
    counts: dict[str, int] = {}
    for row in gallery_rows:
        last_of[identities[row]] = int(row)
        counts[identities[row]] = counts.get(identities[row], 0) + 1
    mated = np.array(sorted(r for i, r in last_of.items() if counts[i] > 1), np.int64)
    gallery = np.setdiff1d(gallery_rows, mated)
    return CheckSets(gallery, mated, np.flatnonzero((parts == 3) & named))


def best_matches(
    faces: FaceSet, probes: NDArray[np.int64], gallery: NDArray[np.int64]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Per probe: the highest similarity to a gallery face, and that face's row."""
    similarities = faces.embeddings[probes] @ faces.embeddings[gallery].T
    best = similarities.argmax(axis=1)
    return similarities[np.arange(len(probes)), best], gallery[best]


def run_check(faces: FaceSet, fit_far: float, floor: float) -> dict[str, Any]:
    pairing = Pairing.of(faces)
    parts = identity_parts(faces.identities, CHECK_PARTS)
    named = faces.datasets == CHECK_DATASET
    tail_rows = np.flatnonzero(parts < 2)
    tail = as_tail(measure_tail(faces, pairing, tail_rows, fit_far))
    sets = check_sets(faces, parts, named)
    identities = np.array(faces.identities)
    rng = np.random.default_rng(0)
    order = rng.permutation(sets.gallery)
    rows = []
    for size in (*[s for s in CHECK_SIZES if s < len(order)], len(order)):
        gallery = np.sort(order[:size])
        subjects = len(set(identities[gallery]))
        enrolled = set(identities[gallery])
        mated = np.array([r for r in sets.mated if identities[r] in enrolled], np.int64)
        stranger_best, _ = best_matches(faces, sets.strangers, gallery)
        for target in CHECK_FPIRS:
            row: dict[str, Any] = {"faces": size, "subjects": subjects, "target_fpir": target}
            # The method alone (no 1:1 floor), N counted as faces and as subjects; then
            # what the service applies (N = faces, floored at the match threshold).
            for counted, n, lowest in (
                ("faces", size, -1.0),
                ("subjects", subjects, -1.0),
                ("service", size, floor),
            ):
                derived = derive_threshold(tail, gallery_size=n, target_fpir=target, floor=lowest)
                false = int(np.count_nonzero(stranger_best >= derived.threshold))
                row[f"threshold_{counted}"] = round(derived.threshold, 4)
                row[f"fpir_{counted}"] = round(false / len(sets.strangers), 5)
                row[f"false_{counted}"] = false
            if len(mated):
                mated_best, mated_rows = best_matches(faces, mated, gallery)
                right = identities[mated_rows] == identities[mated]
                hit = right & (mated_best >= row["threshold_service"])
                row["fnir_service"] = round(float(1 - hit.mean()), 5)
            row["mated_probes"] = len(mated)
            rows.append(row)
    return {
        "split": (
            f"identities by sha256 mod {CHECK_PARTS}: tail on parts 0-1 "
            f"({tail.pairs:,} impostor pairs), gallery from part 2 ({CHECK_DATASET}; each "
            "subject's last face held back as a mated probe when it has several), "
            f"strangers from part 3 ({CHECK_DATASET})"
        ),
        "strangers": len(sets.strangers),
        "tail_pairs": tail.pairs,
        "rows": rows,
    }


def print_check(check: dict[str, Any]) -> None:
    print(f"\nheld-out check: {check['split']}; {check['strangers']:,} strangers")
    table = [
        (
            f"{r['faces']:,}",
            f"{r['subjects']:,}",
            f"{r['target_fpir']:g}",
            *(
                f"{r[f'threshold_{c}']:.4f}: {r[f'fpir_{c}']:.4f} ({r[f'false_{c}']})"
                for c in ("faces", "subjects", "service")
            ),
            f"{r.get('fnir_service', float('nan')):.4f} of {r['mated_probes']}",
        )
        for r in check["rows"]
    ]
    headers = (
        "faces",
        "subjects",
        "target",
        "N=faces: t: FPIR (false)",
        "N=subjects",
        "service (floored)",
        "FNIR (service)",
    )
    print(format_table(headers, table))


# --- the manifest ----------------------------------------------------------------------------


def tail_record(
    measured: MeasuredTail,
    faces: FaceSet,
    check: dict[str, Any] | None,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    datasets = sorted(set(faces.datasets.tolist()))
    return {
        **provenance,
        "data": (
            f"{', '.join(datasets)} of ../shared/data: {len(faces.images):,} images with a face "
            f"({faces.without_face} without), {len(set(faces.identities)):,} identities; "
            "every pair of different identities within a data set (names do not link data "
            "sets: CFP spells many LFW people differently); the largest face of each image "
            "through POST /embed"
        ),
        "images": len(faces.images),
        "identities": len(set(faces.identities)),
        "pairs": measured.pairs,
        "quantiles": {q.label: round(q.threshold, 6) for q in measured.quantiles},
        "exceedances": {q.label: q.exceedances for q in measured.quantiles},
        "fit": {
            "kind": "exponential",
            "far": measured.fit_far,
            "threshold": round(measured.fit_threshold, 6),
            "scale": round(measured.scale, 6),
            "exceedances": measured.fit_exceedances,
        },
        "top_scores": [round(s, 4) for s in measured.top_scores],
        "check": check,
    }


def write_manifest(path: Path, record: dict[str, Any], recognizer_id: str) -> None:
    """Replace the manifest's ``impostor_tail``; refuse when it is not the measured model.
    The result is validated before the file is written."""
    current = load_manifest(path)
    if current.model_id != recognizer_id:
        raise SystemExit(f"{path} describes {current.model_id}, not {recognizer_id}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["impostor_tail"] = record
    ModelManifest.model_validate(raw)
    path.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"impostor tail written to {path}")


def manifest_path(recognizer: str | None) -> Path:
    manifest, path = resolve_manifest(recognizer or "w600k_mbf_int8")
    del manifest
    return path


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated, of {', '.join(DATASETS)} (default: all)",
    )
    parser.add_argument("--cache", type=Path, help="folder for each data set's embeddings (.npz)")
    parser.add_argument(
        "--fit-far", type=float, default=DEFAULT_FIT_FAR, help="rate of the tail fit's anchor"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the held-out check")
    parser.add_argument(
        "--write-manifest",
        action="store_true",
        help="write the tail into the recognizer's manifest (models/manifests/<name>.json)",
    )
    return parser.parse_args(argv)


def print_tail(measured: MeasuredTail) -> None:
    print(f"\nimpostor tail: {measured.pairs:,} different-identity pairs")
    rows = [(q.label, f"{q.threshold:.4f}", f"{q.exceedances:,}") for q in measured.quantiles]
    print(format_table(("FAR", "threshold", "pairs at or above"), rows))
    print(
        f"exponential tail beyond: anchor FAR {measured.fit_far:g} at {measured.fit_threshold:.4f},"
        f" scale {measured.scale:.4f} ({measured.fit_exceedances:,} excesses)"
    )
    print("highest impostor similarities: " + ", ".join(f"{s:.4f}" for s in measured.top_scores))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started, commit = datetime.now(UTC), source_commit()
    machine = machine_description()
    print_machine(machine)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    with open_services(
        url=None,
        api_key=None,
        models_dir=args.models_dir,
        detector=args.detector,
        recognizers=[("recognizer", args.recognizer)],
    ) as (service,):
        print(f"{service.detector_id} + {service.recognizer_id}")
        faces = embed_faces(service, args.data_root, datasets, args.cache)
        floor = service.threshold
    pairing = Pairing.of(faces)
    measured = measure_tail(faces, pairing, np.arange(len(faces.images)), args.fit_far)
    print_tail(measured)
    check = None if args.no_check else run_check(faces, args.fit_far, floor)
    if check:
        print_check(check)
    provenance = {
        "command": shlex.join(["python", "-m", "bench.impostor_tail", *argv]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "detector": service.detector_id,
        "recognizer": service.recognizer_id,
    }
    record = tail_record(measured, faces, check, provenance)
    after = machine_description()
    print(
        f"load average (1m) {machine['load_average_1m_5m'][0]:.2f} at start, "
        f"{after['load_average_1m_5m'][0]:.2f} at end, {machine['cores']} cores"
    )
    if args.write_manifest:
        write_manifest(manifest_path(args.recognizer), record, service.recognizer_id)
    if args.json_out:
        write_json(args.json_out, {"machine": machine, "impostor_tail": record})
    return record


if __name__ == "__main__":
    main()
