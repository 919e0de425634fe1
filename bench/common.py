"""Helpers shared by the benchmark scripts: default paths, data sets, reporting."""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.core.types import ImageArray
from app.inference.image import decode_image

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shared assets live beside the clone (see .ci/run); the environment overrides.
SHARED_ROOT = REPO_ROOT.parent / "shared"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Benchmark inputs are trusted local files; these only have to admit them.
_MAX_BYTES = 64 << 20
_MAX_PIXELS = 100_000_000


def default_models_dir() -> Path:
    return Path(os.environ.get("FACEREC_MODELS_DIR") or SHARED_ROOT / "models")


def default_data_root() -> Path:
    return Path(os.environ.get("FACEREC_DATA_ROOT") or SHARED_ROOT / "data")


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--models-dir, --data-root, --detector, --recognizer, --json-out."""
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
        help="folder with lfw/, celeba/, photos/ (default: $FACEREC_DATA_ROOT or ../shared/data)",
    )
    parser.add_argument("--detector", help="detector catalog name or manifest path")
    parser.add_argument("--recognizer", help="recognizer catalog name or manifest path")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")


def model_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The Settings fields the user chose on the command line (others keep their defaults)."""
    chosen = {"detector": args.detector, "recognizer": args.recognizer}
    return {field: value for field, value in chosen.items() if value}


@dataclass(frozen=True, slots=True)
class LabelledImage:
    path: Path
    identity: str


def read_celeba(celeba_dir: Path) -> list[LabelledImage]:
    """labels.csv rows (path relative to ``celeba_dir``, identity), sorted by path."""
    with (celeba_dir / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = [
            LabelledImage(celeba_dir / row["path"], row["identity"])
            for row in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda row: str(row.path))


def list_images(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursively), sorted by path."""
    return sorted(path for path in directory.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: Path) -> ImageArray:
    """Decode a file exactly as the service decodes an upload (EXIF-upright RGB)."""
    return decode_image(path.read_bytes(), max_bytes=_MAX_BYTES, max_pixels=_MAX_PIXELS).pixels


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description() -> dict[str, Any]:
    """What a reader needs to compare figures: when, where, how busy."""
    load_1, load_5, _ = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": available_cores(),
        "load_average_1m_5m": [round(load_1, 2), round(load_5, 2)],
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }


def print_machine(description: dict[str, Any]) -> None:
    load_1, load_5 = description["load_average_1m_5m"]
    print(
        f"{description['date']}  {description['cpu']}, {description['cores']} cores  "
        f"load {load_1:.2f} (1m) "
        f"{load_5:.2f} (5m)  onnxruntime {description['onnxruntime']}"
    )
    if load_1 > description["cores"] * 0.5:
        print("note: other processes are using the CPU; timings are pessimistic")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first, *rest = row
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    print(f"results written to {path}")


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_insightface_package(
    package_dir: Path, files: Sequence[tuple[str, Path, str]], licence: str
) -> None:
    """An insightface 2.1 model package (manifest V2) holding copies of ``files``
    ((task, path, sha256): our detector and recognizer).

    insightface resolves task files inside the package directory (symlinks out of it
    are refused), so the files are copied; their sha256 is checked on load.
    """
    package_dir.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for task, path, sha256 in files:
        shutil.copyfile(path, package_dir / path.name)
        tasks[task] = {"file": path.name, "sha256": sha256}
    (package_dir / "MODEL.LICENSE").write_text(licence + "\n")
    manifest = {
        "manifest_version": 2,
        "model_id": "facerec-bench",
        "license": "MODEL.LICENSE",
        "tasks": tasks,
    }
    (package_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
