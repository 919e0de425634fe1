"""``python -m training evaluate``: recognizers compared through the service's own engines.

Faces come from identity folders (``--data``, optionally the ``val`` identities of a
split) or from a gallery (``--gallery`` + ``--split``: the split's held-out faces, as
stored now). Every recognizer runs through ``app.inference`` (manifest -> verified file
-> onnxruntime session -> ``ArcFaceEmbedder``, flip-sum as the manifest says): no
PyTorch on this path. ``--degrade`` adds the same faces degraded as a camera would
(``training.degrade``). ``--gate`` compares the first recognizer (the one serving) with
the second (the candidate) under ``training.promotion`` and writes the decision into the
candidate's manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import available_cores
from app.inference.catalog import resolve_manifest
from app.inference.loader import build_embedder, load_model
from app.inference.manifest import file_sha256
from app.inference.session import RuntimeOptions
from training.config import ConfigError, FinetuneConfig, config_from_args
from training.data import build_cropper
from training.evaluation import LfwPair, ProtocolResult, lfw_accuracy, validation_protocol
from training.face_sources import load_identity_faces, load_lfw, resolve_models_dir
from training.faces import FaceSet
from training.promotion import GateRule, decide, describe, record_decision
from training.report import format_table, plot_protocols, write_json
from training.run_files import METRICS_FILE, REPORT_FILE

logger = logging.getLogger(__name__)

DEGRADED = "degraded"


def gallery_held_out(
    args: argparse.Namespace, config: FinetuneConfig
) -> tuple[FaceSet, dict[str, Any]]:
    """The held-out faces of ``--split`` in ``--gallery``, opened for the recognizer whose
    embeddings it holds (``--gallery-model``, default the first ``--recognizer``)."""
    from training.from_gallery import held_out_faces, read_collection, redact

    if args.split is None:
        raise ConfigError("evaluate --gallery needs --split (the candidate run's split.json)")
    document = json.loads(args.split.read_text(encoding="utf-8"))
    if "held_out_faces" not in document:
        raise ConfigError(f"{args.split} names no held-out faces: not a gallery run's split")
    manifest, _ = resolve_manifest(args.gallery_model or args.recognizer[0], None)
    assert manifest.embedding_dim is not None
    collection = document.get("collection") or config.gallery.collection
    faces = read_collection(
        args.gallery, collection, model_id=manifest.model_id, dim=manifest.embedding_dim
    )
    held, deleted = held_out_faces(faces, document, config.gallery.photos_dir)
    if len(held) == 0:
        raise ValueError(
            f"none of the split's {len(document['held_out_faces'])} held-out faces "
            "is in the gallery any more"
        )
    summary = {
        "source": "gallery",
        "gallery": redact(args.gallery),
        "collection": collection,
        "held_out_subjects": len(set(held.identities)),
        "held_out_faces": len(held),
        "held_out_faces_deleted_since": deleted,
        "split_sha256": file_sha256(args.split),
    }
    return held, summary


def check_unseen(candidate_ref: str, split: Path) -> None:
    """The candidate must have been trained with this split (so its held-out subjects are
    ones it never saw): the split's sha256 is in the candidate's manifest."""
    manifest, _ = resolve_manifest(candidate_ref, None)
    data = (manifest.training or {}).get("data")
    recorded = data.get("split_sha256") if isinstance(data, dict) else None
    if recorded != file_sha256(split):
        raise ConfigError(
            f"{candidate_ref} was not trained with {split} (split sha256 differs or is not "
            "recorded): its held-out subjects cannot be vouched for"
        )


def check_gate_arguments(args: argparse.Namespace) -> None:
    if len(args.recognizer) != 2:
        raise ConfigError(
            "--gate compares exactly two: --recognizer SERVING --recognizer CANDIDATE"
        )
    if args.split is None:
        raise ConfigError("--gate needs --split (the candidate run's split.json)")
    check_unseen(args.recognizer[1], args.split)


@dataclass
class Evaluations:
    """Per face set ("" = as stored, "degraded"), per model label: result and summary."""

    labels: list[str]
    results: dict[str, dict[str, ProtocolResult]]
    summaries: dict[str, dict[str, dict[str, Any]]]


def unique_label(name: str, ref: str, taken: list[str]) -> str:
    """A model's column: its manifest name, or ``name (ref)`` when an earlier model has
    that name (two fine-tuned runs are both called ``finetuned`` by default)."""
    if name not in taken:
        return name
    label = f"{name} ({ref})"
    suffix = 2
    while label in taken:
        label, suffix = f"{name} ({ref}) #{suffix}", suffix + 1
    return label


def evaluate_models(
    args: argparse.Namespace,
    sets: dict[str, FaceSet],
    lfw: tuple[list[LfwPair], FaceSet] | None,
    models_dir: Path,
    threads: int,
) -> Evaluations:
    from training.evaluate import embed_faces

    progress = not args.no_progress
    options = RuntimeOptions(intra_op_threads=threads)
    done = Evaluations([], {name: {} for name in sets}, {name: {} for name in sets})
    for position, ref in enumerate(args.recognizer):
        model = load_model(
            ref, "recognizer", models_dir=models_dir, catalog_dir=None, options=options
        )
        embedder = build_embedder(model)
        label = unique_label(model.manifest.name, ref, done.labels)
        if args.gate:
            label = ("serving", "candidate")[position]
        done.labels.append(label)
        for set_name, face_set in sets.items():
            embeddings = embed_faces(
                embedder, face_set.crops, desc=f"{label} {set_name}".strip(), progress=progress
            )
            result = validation_protocol(embeddings, face_set.identities, face_set.poses())
            done.results[set_name][label] = result
            done.summaries[set_name][label] = {
                **result.summary(),
                "model_id": model.manifest.model_id,
            }
        if lfw is not None:
            pairs, lfw_faces = lfw
            lfw_embeddings = embed_faces(
                embedder, lfw_faces.crops, desc=f"{label} LFW", progress=progress
            )
            done.summaries[""][label]["lfw"] = lfw_accuracy(
                pairs, dict(zip(lfw_faces.relpaths, lfw_embeddings, strict=True))
            )
    return done


def gate(
    args: argparse.Namespace, done: Evaluations, data_summary: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    """The decision (``training.promotion``), written into the candidate's manifest."""
    serving, candidate = (done.summaries[""][label] for label in done.labels)
    decision = decide(serving, candidate, GateRule(args.margin, args.lfw_tolerance))
    decision["data"] = data_summary
    decision["serving"] = serving["model_id"]
    decision["figures"] = {"serving": serving, "candidate": candidate}
    if DEGRADED in done.summaries:
        decision["degraded"] = {
            "serving": done.summaries[DEGRADED][done.labels[0]],
            "candidate": done.summaries[DEGRADED][done.labels[1]],
        }
    decision["report"] = str(out_dir / REPORT_FILE)
    record_decision(resolve_manifest(args.recognizer[1], None)[1], decision)
    return decision


def run_evaluate(
    args: argparse.Namespace,
    config: FinetuneConfig,
    models_dir: Path,
    folder_faces: Callable[[], FaceSet],
    lfw: tuple[list[LfwPair], FaceSet] | None,
    threads: int,
) -> int:
    """``folder_faces`` gives the ``--data`` faces (called only without ``--gallery``)."""
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.gate:
        check_gate_arguments(args)
    if args.gallery is not None:
        faces, data_summary = gallery_held_out(args, config)
        identities = "held-out identities"
    else:
        faces = folder_faces()
        data_summary = {"source": "folders", "faces": len(faces)}
        identities = "validation identities"
    sets: dict[str, FaceSet] = {"": faces}
    if args.degrade:
        from training.degrade import DESCRIPTION, degrade_faces

        sets[DEGRADED] = FaceSet(degrade_faces(faces.crops), faces.identities, faces.relpaths)
        data_summary["degraded"] = DESCRIPTION
    done = evaluate_models(args, sets, lfw, models_dir, threads)
    plots = []
    sections = []
    for set_name in sets:
        suffix = f"_{set_name}" if set_name else ""
        title = f"{identities}, {set_name}" if set_name else identities
        plots += plot_protocols(done.results[set_name], out_dir, identities=title, suffix=suffix)
        sections.append(f"[{title}]\n{format_table(done.summaries[set_name])}")
    report = "\n\n".join(sections)
    decision = gate(args, done, data_summary, out_dir) if args.gate else None
    if decision is not None:
        report += "\n\n" + describe(decision) + f"\n(written into {args.recognizer[1]})"
    write_json(
        out_dir / METRICS_FILE,
        {
            "models": done.summaries[""],
            **({"degraded": done.summaries[DEGRADED]} if DEGRADED in sets else {}),
            "data": data_summary,
            "promotion": decision,
            "plots": [str(p) for p in plots],
            "command": sys.argv,
        },
    )
    (out_dir / REPORT_FILE).write_text(report + "\n", encoding="utf-8")
    print(report)
    return 0


def run(args: argparse.Namespace) -> int:
    """The command: faces from ``--data`` folders or ``--gallery``, then ``run_evaluate``."""
    config = config_from_args(args)
    models_dir = resolve_models_dir(config.data.models_dir)
    progress = not args.no_progress
    cropper = build_cropper(config.data.detector, models_dir)

    def folder_faces() -> FaceSet:
        assert config.data.data_dir is not None
        faces = load_identity_faces(
            config.data.data_dir, config, cropper, report_dir=None, progress=progress
        )
        if args.split is not None:
            split = json.loads(args.split.read_text(encoding="utf-8"))
            faces = faces.of_identities(split.get("held_out") or split["val"])
        return faces

    lfw = load_lfw(config.data.lfw_dir, config, cropper, progress) if config.data.lfw_dir else None
    return run_evaluate(args, config, models_dir, folder_faces, lfw, threads=available_cores())
