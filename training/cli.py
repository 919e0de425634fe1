"""``python -m training {finetune,evaluate,export,reembed}``: the offline training CLI.

finetune  data -> crops -> split -> backbone + margin head -> epochs -> ONNX + manifest
evaluate  any recognizer manifests (the service's onnxruntime path) on held-out identities
export    a checkpoint -> ONNX + parity check + calibrated manifest
distill   the base model's flip-sum embedding -> a one-pass student (ONNX + manifest)
reembed   a gallery's stored aligned crops -> a new gallery for another recognizer
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.errors import FaceRecError
from training.config import ConfigError
from training.run_files import BEST_CHECKPOINT, CHECKPOINT_DIR

logger = logging.getLogger("training")

# Commands that run PyTorch; evaluate and reembed run through onnxruntime only.
TORCH_COMMANDS = frozenset({"finetune", "export", "distill"})
NO_TORCH = (
    "python -m training: error: PyTorch is not installed; install the train extra: "
    "pip install 'facerec[train]' (or scripts/setup.sh cpu train)\n"
)


# Each command's module is imported only when it runs (PyTorch only for those that train).


def run_finetune(args: argparse.Namespace) -> int:
    from training import finetune_cmd

    return finetune_cmd.run_finetune(args)


def run_evaluate(args: argparse.Namespace) -> int:
    from training import evaluate_cmd

    return evaluate_cmd.run(args)


def run_export(args: argparse.Namespace) -> int:
    from training import export_cmd

    return export_cmd.run_export(args)


def run_distill(args: argparse.Namespace) -> int:
    from training import distill_cmd

    return distill_cmd.run_distill(args)


def run_reembed(args: argparse.Namespace) -> int:
    from training import reembed_cmd

    return reembed_cmd.run_reembed(args)


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def _data_options(parser: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=data_required,
        help="folder of identity subfolders (photos anywhere below them)",
    )
    parser.add_argument("--config", type=Path, help="JSON or TOML configuration file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any configuration field (repeatable)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="folder with the detector .onnx (default: $FACEREC_MODELS_DIR)",
    )
    parser.add_argument("--detector", help="the service's detector manifest (default scrfd_500m)")
    parser.add_argument("--cache-dir", type=Path, help="aligned-crop cache folder")
    parser.add_argument("--lfw", type=Path, help="LFW folder (images/, pairs.txt) to check too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _gallery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gallery",
        metavar="DATA_DIR_OR_DATABASE_URL",
        help="train on a service gallery's enrolled faces instead of --data folders",
    )
    parser.add_argument("--collection", help="the gallery collection (default: default)")
    parser.add_argument(
        "--photos", type=Path, help="the enrolled photos (CFP layout): pose labels by sha256"
    )


def _distill_parser(commands: Any) -> None:
    distill = commands.add_parser(
        "distill", help="distil the base's flip-sum embedding into one pass, export it"
    )
    distill.add_argument(
        "--base", default="w600k_mbf_int8", help="the flip-sum recognizer's manifest"
    )
    distill.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="folder of identity subfolders (repeatable; labels are not used for training)",
    )
    distill.add_argument("--out", type=Path, required=True, help="output folder")
    distill.add_argument(
        "--val-identities", type=float, default=50, help="identities held out to pick the epoch"
    )
    distill.add_argument("--train-last", type=int, default=5, help="layer groups retrained")
    distill.add_argument("--epochs", type=int, default=5)
    distill.add_argument("--lr", type=float, default=1e-4)
    distill.add_argument("--batch-size", type=int, default=128)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    distill.add_argument("--name", help="model name in the manifest (default <base>_onepass)")
    distill.add_argument("--models-dir", type=Path, help="default: $FACEREC_MODELS_DIR")
    distill.add_argument("--detector", help="the service's detector manifest (default scrfd_500m)")
    distill.add_argument("--cache-dir", type=Path, help="aligned-crop cache folder")
    distill.add_argument("--lfw", type=Path, help="LFW folder: report accuracies")
    distill.add_argument("--no-progress", action="store_true", help="no progress bars")
    distill.set_defaults(handler=run_distill, config=None, set=[])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    finetune = commands.add_parser("finetune", help="fine-tune a recognizer, export it")
    finetune.add_argument(
        "--base", required=True, help="the pretrained recognizer's manifest (name or path)"
    )
    finetune.add_argument("--out", type=Path, required=True, help="output folder")
    _data_options(finetune, data_required=False)
    _gallery_options(finetune)
    finetune.add_argument("--val-identities", type=float, help="count (>=1) or fraction")
    finetune.add_argument("--epochs", type=int)
    finetune.add_argument("--freeze", help="head | last:K | all")
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--lr-backbone", type=float)
    finetune.add_argument("--lr-head", type=float)
    finetune.add_argument("--head", choices=["arcface", "cosface", "combined"])
    finetune.add_argument("--seed", type=int)
    finetune.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    finetune.add_argument("--name", help="model name in the manifest")
    finetune.add_argument(
        "--resume",
        nargs="?",
        const="last",
        help="continue from OUT/checkpoints/last.pt (or the given file)",
    )
    finetune.set_defaults(handler=run_finetune)

    evaluate = commands.add_parser("evaluate", help="evaluate recognizer manifests")
    evaluate.add_argument(
        "--recognizer",
        action="append",
        required=True,
        help="catalog name or manifest path (repeatable)",
    )
    evaluate.add_argument(
        "--split",
        type=Path,
        help="split.json: evaluate its held-out identities (its val ones when it has none)",
    )
    evaluate.add_argument("--out", type=Path, required=True)
    _data_options(evaluate, data_required=False)
    _gallery_options(evaluate)
    evaluate.add_argument(
        "--degrade", action="store_true", help="also evaluate camera-like degraded faces"
    )
    evaluate.add_argument(
        "--gallery-model",
        help="the recognizer the gallery was built with (default: the first --recognizer)",
    )
    evaluate.add_argument(
        "--gate",
        action="store_true",
        help="promotion gate: --recognizer SERVING --recognizer CANDIDATE; the decision goes "
        "into the candidate's manifest",
    )
    evaluate.add_argument(
        "--margin", type=float, default=0.005, help="gate: TAR@1e-3 gain needed (0.005 = 0.5 pt)"
    )
    evaluate.add_argument(
        "--lfw-tolerance", type=float, default=0.002, help="gate: LFW loss allowed (0.2 pt)"
    )
    evaluate.set_defaults(handler=run_evaluate)

    export = commands.add_parser("export", help="export a checkpoint as ONNX + manifest")
    export.add_argument("--base", required=True, help="the run's base recognizer manifest")
    export.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help=f"e.g. OUT/{CHECKPOINT_DIR}/{BEST_CHECKPOINT}",
    )
    export.add_argument("--split", type=Path, help="split.json (default: beside checkpoints/)")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--name", help="model name in the manifest")
    _data_options(export)
    export.set_defaults(handler=run_export)

    _distill_parser(commands)

    reembed = commands.add_parser("reembed", help="re-embed a gallery for another recognizer")
    reembed.add_argument("--data-dir", type=Path, required=True, help="the existing gallery")
    reembed.add_argument("--recognizer", required=True, help="catalog name or manifest path")
    reembed.add_argument("--out", type=Path, required=True, help="the new gallery folder")
    reembed.add_argument("--collection", help="only this collection")
    reembed.add_argument("--models-dir", type=Path)
    reembed.set_defaults(handler=run_reembed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in {"finetune", "evaluate"} and (args.data is None) == (
        getattr(args, "gallery", None) is None
    ):
        parser.error(f"{args.command}: pass exactly one of --data and --gallery")
    if args.command in TORCH_COMMANDS and not torch_installed():
        # Without the train extra, say so in one line (exit 2), before any traceback can.
        sys.stderr.write(NO_TORCH)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        code: int = args.handler(args)
    except (ConfigError, FaceRecError, FileNotFoundError, ValueError) as exc:
        logger.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code
