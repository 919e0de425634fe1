"""Open-set identification as the gallery grows: measured FPIR and FNIR at the service's
default target, and the threshold it chose, at several gallery sizes.

Run from the repository root (embeddings from ``bench.impostor_tail --cache``)::

    python -m bench.openset_scale --cache /tmp/facerec-faces --sizes 1000,10000,100000

Identities of ../shared/data are split by sha256 in four (``bench.impostor_tail``'s
split); gallery, probes and synthetic faces are all LFW's (names do not link data sets,
``bench.faces``). Part 2 is enrolled (every face of a subject but the last, held back as an
enrolled probe when it has several); part 3 are strangers, never enrolled. A gallery of N
faces holds the enrolled faces and, to reach N, synthetic identities mixed from two real faces of
different people of parts 0-1 (never a stranger's, nor an enrolled subject's;
``synthetic_faces`` says how), without being anybody in the data; how their similarities
to the strangers compare with real faces' is printed first. There are no more real
faces than that on this machine: at 100,000 faces nearly all of the gallery is synthetic,
and the figures say how the threshold behaves against such a gallery, not against a
million real people.

Each gallery goes into a real embedded gallery (``open_gallery``), is searched by its
own ``search``, and the threshold is the one ``ThresholdPolicy`` gives the collection
(the recognizer manifest's ``impostor_tail``, ``FACEREC_TARGET_FPIR``'s default). Also
shown: the threshold from a tail measured on parts 0-1 only (held out from the strangers
and the gallery), and the fixed 1:1 threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.config import Settings
from app.core.openset import derive_threshold
from app.core.thresholds import OpenSetConfig, ThresholdPolicy
from app.core.types import NewFace
from app.gallery import open_gallery
from app.inference.catalog import resolve_manifest
from app.inference.manifest import impostor_tail_of
from bench.common import (
    add_model_arguments,
    format_table,
    machine_description,
    print_machine,
    write_json,
)
from bench.faces import CHECK_DATASET, FaceSet, embed_faces
from bench.impostor_tail import (
    CHECK_PARTS,
    Pairing,
    as_tail,
    check_sets,
    identity_parts,
    measure_tail,
)
from bench.service import open_services
from training.evaluation.tail import DEFAULT_FIT_FAR

COLLECTION = "scale"
BULK_ROWS = 5000
SEARCH_ROWS = 512


def synthetic_faces(
    faces: FaceSet, sources: NDArray[np.int64], count: int, seed: int
) -> NDArray[np.float32]:
    """``count`` synthetic identities: ``mean + ((a - mean) + (b - mean)) / sqrt 2`` for two
    faces a, b of different identities among ``sources`` (``mean``: their mean embedding),
    normalised. Keeping the component every face shares, and the spread of the rest, is
    what makes them score against a stranger like a real face does; a plain normalised
    ``a + b`` doubles the shared component relative to the rest and scores higher."""
    rng = np.random.default_rng(seed)
    identities = np.array(faces.identities)
    first = rng.choice(sources, count)
    second = rng.choice(sources, count)
    clash = identities[first] == identities[second]
    while clash.any():
        second[clash] = rng.choice(sources, int(clash.sum()))
        clash = identities[first] == identities[second]
    mean = faces.embeddings[sources].mean(axis=0)
    mixed = mean + (faces.embeddings[first] + faces.embeddings[second] - 2 * mean) / np.sqrt(2)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    result: NDArray[np.float32] = mixed.astype(np.float32)
    return result


def impostor_likeness(
    faces: FaceSet, sets: Any, sources: NDArray[np.int64]
) -> dict[str, dict[str, float]]:
    """Strangers against real enrolled faces and against as many synthetic ones: upper
    quantiles of the similarities (is a synthetic face a realistic impostor?)."""
    real = faces.embeddings[sets.gallery]
    synthetic = synthetic_faces(faces, sources, len(real), seed=1)
    strangers = faces.embeddings[sets.strangers]
    found = {}
    for label, gallery in (("real", real), ("synthetic", synthetic)):
        scores = (strangers @ gallery.T).ravel()
        found[label] = {
            f"{far:g}": float(np.quantile(scores, 1 - far)) for far in (1e-2, 1e-3, 1e-4, 1e-5)
        }
    return found


def fill_gallery(
    gallery: Any, faces: FaceSet, enrolled: NDArray[np.int64], synthetic: NDArray[np.float32]
) -> None:
    rows: list[tuple[str, NewFace]] = []
    for row in enrolled:
        rows.append((faces.identities[row], _face(f"real-{row}", faces.embeddings[row])))
    for number, vector in enumerate(synthetic):
        rows.append((f"synthetic-{number}", _face(f"synthetic-{number}", vector)))
    for start in range(0, len(rows), BULK_ROWS):
        gallery.add_faces_bulk(COLLECTION, rows[start : start + BULK_ROWS])


def _face(name: str, embedding: NDArray[np.float32]) -> NewFace:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return NewFace(
        image_sha256=digest, bbox=(0.0, 0.0, 1.0, 1.0), det_score=1.0, embedding=embedding
    )


def best_hits(
    gallery: Any, embeddings: NDArray[np.float32], *, collection: str = COLLECTION
) -> tuple[NDArray[np.float32], list[str]]:
    """Best candidate's similarity (-1: none) and subject ('' : none) per embedding."""
    similarities: list[float] = []
    subjects: list[str] = []
    for start in range(0, len(embeddings), SEARCH_ROWS):
        for hits in gallery.search(collection, embeddings[start : start + SEARCH_ROWS], 1):
            similarities.append(hits[0].similarity if hits else -1.0)
            subjects.append(hits[0].subject if hits else "")
    return np.array(similarities, np.float32), subjects


def measure_size(
    faces: FaceSet,
    size: int,
    sets: Any,
    sources: NDArray[np.int64],
    policy_config: OpenSetConfig,
    held_out_tail: Any,
    scratch: Path,
) -> dict[str, Any]:
    enrolled = sets.gallery[:size]
    synthetic = synthetic_faces(faces, sources, max(size - len(enrolled), 0), seed=size)
    gallery = open_gallery(
        data_dir=scratch / f"g{size}", model_id="bench-openset", dim=faces.embeddings.shape[1]
    )
    try:
        fill_gallery(gallery, faces, enrolled, synthetic)
        policy = ThresholdPolicy(policy_config, gallery, None)
        applied = policy.threshold(COLLECTION)
        stranger_best, _ = best_hits(gallery, faces.embeddings[sets.strangers])
        identities = np.array(faces.identities)
        in_gallery = set(identities[enrolled])
        mated = np.array([r for r in sets.mated if identities[r] in in_gallery], np.int64)
        mated_best, mated_subjects = best_hits(gallery, faces.embeddings[mated])
    finally:
        gallery.close()
    held = derive_threshold(
        held_out_tail,
        gallery_size=applied.gallery_size,
        target_fpir=policy_config.default_target_fpir,
        floor=policy_config.match_threshold,
    )
    right = np.array(mated_subjects) == identities[mated]
    row: dict[str, Any] = {
        "faces": applied.gallery_size,
        "real_faces": len(enrolled),
        "strangers": len(sets.strangers),
        "mated_probes": len(mated),
        "target_fpir": policy_config.default_target_fpir,
    }
    for label, threshold, source in (
        ("service", applied.threshold, applied.source),
        ("held_out_tail", held.threshold, held.source),
        ("fixed", policy_config.match_threshold, "fixed"),
    ):
        false = int(np.count_nonzero(stranger_best >= threshold))
        hit = right & (mated_best >= threshold)
        row[label] = {
            "threshold": round(float(threshold), 4),
            "source": source,
            "fpir": false / len(sets.strangers),
            "false_matches": false,
            "fnir": float(1 - hit.mean()) if len(mated) else None,
        }
    return row


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    def cell(entry: dict[str, Any]) -> str:
        fnir = "n/a" if entry["fnir"] is None else f"{entry['fnir']:.4f}"
        return (
            f"{entry['threshold']:.4f} FPIR {entry['fpir']:.4f} ({entry['false_matches']}) "
            f"FNIR {fnir}"
        )

    table = [
        (
            f"{r['faces']:,}",
            f"{r['real_faces']:,}",
            f"{r['target_fpir']:g}",
            cell(r["service"]),
            cell(r["held_out_tail"]),
            cell(r["fixed"]),
        )
        for r in rows
    ]
    print(format_table(("faces", "real", "target", "service", "held-out tail", "fixed 1:1"), table))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_model_arguments(parser)
    parser.add_argument("--cache", type=Path, required=True, help="bench.impostor_tail --cache")
    parser.add_argument("--sizes", default="1000,10000,100000", help="gallery sizes, in faces")
    parser.add_argument("--target-fpir", type=float, help="default: FACEREC_TARGET_FPIR's")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    machine = machine_description()
    print_machine(machine)
    with open_services(
        url=None,
        api_key=None,
        models_dir=args.models_dir,
        detector=args.detector,
        recognizers=[("recognizer", args.recognizer)],
    ) as (service,):
        faces = embed_faces(service, args.data_root, ["lfw", "cfp", "celeba"], args.cache)
        match = service.threshold
    manifest, _ = resolve_manifest(args.recognizer or Settings.model_fields["recognizer"].default)
    tail = impostor_tail_of(manifest)
    if tail is None:
        raise SystemExit(f"{manifest.name} has no impostor_tail: run bench.impostor_tail first")
    target = args.target_fpir or Settings.model_fields["target_fpir"].default
    config = OpenSetConfig(tail=tail, match_threshold=match, default_target_fpir=target)
    parts = identity_parts(faces.identities, CHECK_PARTS)
    named = faces.datasets == CHECK_DATASET
    held_out_tail = as_tail(
        measure_tail(faces, Pairing.of(faces), np.flatnonzero(parts < 2), DEFAULT_FIT_FAR)
    )
    sets = check_sets(faces, parts, named)
    # Not part 2 either: a synthetic face made from an enrolled subject's face would
    # compete with that subject for its enrolled probes.
    sources = np.flatnonzero((parts < 2) & named)
    print(
        f"{len(sets.gallery):,} real faces to enroll, {len(sets.mated):,} enrolled probes, "
        f"{len(sets.strangers):,} strangers; synthetic faces from {len(sources):,} real ones"
    )
    likeness = impostor_likeness(faces, sets, sources)
    print("strangers' similarity quantiles (upper FAR) against real and synthetic faces:")
    for label, values in likeness.items():
        print(f"  {label:9s} " + "  ".join(f"{k}: {v:.4f}" for k, v in values.items()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-openset-") as scratch:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(
                measure_size(faces, size, sets, sources, config, held_out_tail, Path(scratch))
            )
            print_rows(rows[-1:])
    print("\n=== summary ===")
    print_rows(rows)
    after = machine_description()
    print(
        f"load average (1m) {machine['load_average_1m_5m'][0]:.2f} at start, "
        f"{after['load_average_1m_5m'][0]:.2f} at end, {machine['cores']} cores"
    )
    if args.json_out:
        write_json(args.json_out, {"machine": machine, "likeness": likeness, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
