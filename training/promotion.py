"""The promotion gate: is a candidate recognizer better than the one serving?

Rule (``GateRule``), on subjects the candidate never saw (the split's held-out
subjects, checked against the split the candidate was trained with):

* verification TAR at FAR 1e-3 (frontal-profile pairs when poses are known, else all
  pairs) must gain at least ``margin``;
* TAR at FAR 1e-4 and rank-1 identification must not lose more than ``margin``;
* LFW 10-fold accuracy must not lose more than ``lfw_tolerance`` (and must be measured).

The decision, its checks, the figures and the data summary are written into the
candidate's manifest (``metrics.promotion``), which the service validates on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.inference.manifest import ModelManifest

PROTOCOL_ORDER = ("frontal_profile", "all_pairs")


@dataclass(frozen=True, slots=True)
class GateRule:
    margin: float = 0.005  # 0.5 points of TAR (15 of 3,000 genuine pairs)
    lfw_tolerance: float = 0.002  # 0.2 points of LFW accuracy


def _figure(summary: dict[str, Any], *path: str) -> float | None:
    node: Any = summary
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node)


def _protocol(serving: dict[str, Any], candidate: dict[str, Any]) -> str:
    for name in PROTOCOL_ORDER:
        if name in serving.get("verification", {}) and name in candidate.get("verification", {}):
            return name
    raise ValueError("the two evaluations share no verification protocol")


def decide(serving: dict[str, Any], candidate: dict[str, Any], rule: GateRule) -> dict[str, Any]:
    """The decision over two evaluation summaries (``ProtocolResult.summary()`` + ``lfw``)."""
    protocol = _protocol(serving, candidate)
    rank1 = "profile_to_frontal" if protocol == "frontal_profile" else "leave_one_out"
    checks = []

    def check(name: str, path: tuple[str, ...], minimum_gain: float) -> None:
        before, after = _figure(serving, *path), _figure(candidate, *path)
        gain = None if before is None or after is None else after - before
        checks.append(
            {
                "check": name,
                "serving": before,
                "candidate": after,
                "gain": None if gain is None else round(gain, 6),
                "required_gain": minimum_gain,
                "passed": gain is not None and gain >= minimum_gain - 1e-12,
            }
        )

    check(f"{protocol} TAR@FAR=1e-3", ("verification", protocol, "tar_at_far", "1e-3"), rule.margin)
    check(
        f"{protocol} TAR@FAR=1e-4", ("verification", protocol, "tar_at_far", "1e-4"), -rule.margin
    )
    check(f"rank-1 {rank1}", ("rank1", rank1), -rule.margin)
    check("LFW 10-fold accuracy", ("lfw", "accuracy"), -rule.lfw_tolerance)
    return {
        "promoted": all(c["passed"] for c in checks),
        "rule": {"margin": rule.margin, "lfw_tolerance": rule.lfw_tolerance},
        "checks": checks,
    }


def record_decision(manifest_path: Path, promotion: dict[str, Any]) -> None:
    """Write ``promotion`` into the manifest's ``metrics`` (validated, replaced atomically)."""
    document = json.loads(manifest_path.read_text(encoding="utf-8"))
    metrics = dict(document.get("metrics") or {})
    metrics["promotion"] = {**promotion, "decided_at": datetime.now(UTC).isoformat()}
    document["metrics"] = metrics
    ModelManifest.model_validate(document)
    temporary = manifest_path.with_name(manifest_path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, manifest_path)


def describe(decision: dict[str, Any]) -> str:
    lines = [f"promotion: {'PROMOTED' if decision['promoted'] else 'NOT promoted'}"]
    for c in decision["checks"]:
        gain = "not measured" if c["gain"] is None else f"{100 * c['gain']:+.2f} points"
        lines.append(
            f"  [{'pass' if c['passed'] else 'FAIL'}] {c['check']}: {gain} "
            f"(needs {100 * c['required_gain']:+.2f})"
        )
    return "\n".join(lines)
