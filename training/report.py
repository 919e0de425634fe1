"""Reports of evaluations: the headline table (percent, changes against the first model),
ROC plots per protocol, JSON files, the per-epoch CSV log."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.evaluate import plot_roc
from training.evaluation import ProtocolResult

HEADLINE_ROWS = (
    ("frontal-profile TAR@FAR=1e-3", ("verification", "frontal_profile", "tar_at_far", "1e-3")),
    ("frontal-profile TAR@FAR=1e-2", ("verification", "frontal_profile", "tar_at_far", "1e-2")),
    ("frontal-profile TAR@FAR=1e-4", ("verification", "frontal_profile", "tar_at_far", "1e-4")),
    ("frontal-frontal TAR@FAR=1e-3", ("verification", "frontal_frontal", "tar_at_far", "1e-3")),
    ("all-pairs TAR@FAR=1e-3", ("verification", "all_pairs", "tar_at_far", "1e-3")),
    ("profile->frontal rank-1", ("rank1", "profile_to_frontal")),
    ("leave-one-out rank-1", ("rank1", "leave_one_out")),
    ("LFW 10-fold accuracy", ("lfw", "accuracy")),
)


def _lookup(summary: dict[str, Any], path: Sequence[str]) -> float | None:
    node: Any = summary
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node)


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Headline figures side by side (percent); each model after the first carries its
    change against the first in brackets, e.g. ``96.96 (+0.44)``."""
    names = list(summaries)
    widths = [max(16 if i == 0 else 18, len(name) + 2) for i, name in enumerate(names)]
    header = f"{'metric':<30}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
    lines = [header, "-" * len(header)]
    for label, path in HEADLINE_ROWS:
        values = [_lookup(summaries[n], path) for n in names]
        if all(v is None for v in values):
            continue
        cells = "".join(
            f"{_cell(value, values[0] if i else None):>{width}}"
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        )
        lines.append(f"{label:<30}{cells}")
    return "\n".join(lines)


def _cell(value: float | None, first: float | None) -> str:
    if value is None:
        return ""
    if first is None:
        return f"{100 * value:.2f}"
    return f"{100 * value:.2f} ({100 * (value - first):+.2f})"


def plot_protocols(
    results: dict[str, ProtocolResult],
    out_dir: Path,
    *,
    identities: str = "validation identities",
    suffix: str = "",
) -> list[Path]:
    """One ROC PNG per verification protocol, a curve per model."""
    protocols = next(iter(results.values())).verification
    return [
        plot_roc(
            {model: result.verification[name].curve for model, result in results.items()},
            out_dir / f"roc_{name}{suffix}.png",
            f"ROC, {name.replace('_', '-')} pairs, {identities}",
        )
        for name in protocols
    ]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def flatten_protocol(result: ProtocolResult) -> dict[str, float]:
    """``{"frontal_profile_tar@1e-3": 0.91, ..., "rank1_profile_to_frontal": 0.97}``."""
    row: dict[str, float] = {}
    for name, verification in result.verification.items():
        for point in verification.points:
            row[f"{name}_tar@{point.label}"] = point.tar
    for name, value in result.rank1.items():
        row[f"rank1_{name}"] = value
    return row


def append_csv(path: Path, row: dict[str, float]) -> None:
    """Append a row; the header is written with the first row (or when the columns change)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(row)
    existing: list[str] | None = None
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            existing = next(csv.reader(handle), None)
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if existing != header:
            writer.writerow(header)
        writer.writerow([f"{row[key]:.6g}" for key in header])
