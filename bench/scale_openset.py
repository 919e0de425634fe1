"""Open-set figures of ``bench.scale``: FPIR of strangers and FNIR of enrolled probes.

After the latency runs, each size's gallery is opened in-process (the servers are
stopped by then) and searched by its own ``search``, the service's path minus HTTP and
detection, with the cached embeddings the service's pipeline made of every photo:

* **strangers** (``ProbeSet.strangers``: never enrolled, and no distractor was
  synthesised from their faces): FPIR = share of stranger photos whose best candidate
  reaches the threshold; printed with its count and an exact Poisson 95% interval,
  since at a target of 1e-3 a few thousand strangers give only a handful of events;
* **enrolled probes** (every probe photo, their mates enrolled): FNIR = share whose
  best candidate is not their own subject at or above the threshold.

The threshold is the one the service reported in its ``/identify`` answers at that
size (``threshold``, ``threshold_source``): the benchmark measures the service's own
choice, it does not recompute it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import chi2

from app.core.gallery import Gallery
from app.gallery import open_gallery
from bench.openset_scale import best_hits
from bench.probes import ProbeSet, subject_of

POISSON_LEVEL = 0.95
MAX_LISTED = 20  # false matches listed by name in the JSON


@dataclass(frozen=True, slots=True)
class AppliedThreshold:
    """What the service's /identify answers said about their threshold at one size."""

    threshold: float
    source: str
    target_fpir: float | None
    gallery_size: int
    answers: int  # answers that reported exactly this
    others: int  # answers that reported anything else (should be 0)

    @classmethod
    def of(cls, reported: Sequence[tuple[float, str, float | None, int]]) -> AppliedThreshold:
        if not reported:
            raise ValueError("no /identify answer reported a threshold")
        counts = Counter(reported)
        (threshold, source, target, size), answers = counts.most_common(1)[0]
        return cls(threshold, source, target, size, answers, len(reported) - answers)


def poisson_interval(events: int, level: float = POISSON_LEVEL) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval of a Poisson mean from ``events`` observed."""
    tail = (1 - level) / 2
    low = 0.0 if events == 0 else float(chi2.ppf(tail, 2 * events) / 2)
    high = float(chi2.ppf(1 - tail, 2 * events + 2) / 2)
    return low, high


def open_set_rates(
    gallery: Gallery, collection: str, split: ProbeSet, applied: AppliedThreshold
) -> tuple[dict[str, Any], list[str]]:
    """FPIR of every stranger photo and FNIR of every probe photo at ``applied``; and
    every probe's top subject (for recall@1 over all probes)."""
    threshold = applied.threshold
    stranger_best, stranger_subjects = best_hits(
        gallery, split.strangers.embeddings, collection=collection
    )
    matched = np.flatnonzero(stranger_best >= threshold)
    false = len(matched)
    strangers = len(split.strangers)
    low, high = poisson_interval(false)
    probe_best, probe_subjects = best_hits(gallery, split.probes.embeddings, collection=collection)
    truths = np.array([subject_of(identity) for identity in split.probes.identities])
    right = (np.array(probe_subjects) == truths) & (probe_best >= threshold)
    rates = {
        "threshold": threshold,
        "threshold_source": applied.source,
        "target_fpir": applied.target_fpir,
        "threshold_gallery_size": applied.gallery_size,
        "answers_reporting_it": applied.answers,
        "answers_reporting_otherwise": applied.others,
        "strangers": strangers,
        "stranger_identities": len(set(split.strangers.identities)),
        "false_matches": false,
        "fpir": false / strangers,
        "fpir_95": [low / strangers, high / strangers],
        "enrolled_probes": len(truths),
        "fnir": float(1 - right.mean()),
        # Who they are: label noise in the data shows up here (one person, two names).
        "false_match_list": [
            [split.strangers.paths[row], stranger_subjects[row], float(stranger_best[row])]
            for row in matched[:MAX_LISTED]
        ],
        "stranger_best_quantiles": [
            float(value) for value in np.quantile(stranger_best, (0.5, 0.99, 0.999))
        ],
    }
    return rates, probe_subjects


def measure_open_set(
    settings: dict[str, str],
    collection: str,
    split: ProbeSet,
    applied: AppliedThreshold,
    *,
    model_id: str,
    dim: int,
) -> tuple[dict[str, Any], list[str]]:
    """Open the gallery the server of ``settings`` served (stopped now) and measure it."""
    gallery = open_gallery(
        data_dir=Path(settings.get("FACEREC_DATA_DIR", ".")),
        model_id=model_id,
        dim=dim,
        database_url=settings.get("FACEREC_DATABASE_URL"),
    )
    try:
        return open_set_rates(gallery, collection, split, applied)
    finally:
        gallery.close()


def format_open_set(size: int, row: dict[str, Any]) -> list[object]:
    low, high = row["fpir_95"]
    return [
        size,
        f"{row['threshold']:.4f}",
        row["threshold_source"],
        f"{row['target_fpir']:g}" if row["target_fpir"] is not None else "-",
        f"{row['fpir']:.5f} ({row['false_matches']}/{row['strangers']})",
        f"{low:.5f}-{high:.5f}",
        f"{row['fpir'] / row['target_fpir']:.2f}" if row["target_fpir"] else "-",
        f"{row['fnir']:.4f} (of {row['enrolled_probes']})",
        row["http_fnir"],
    ]


OPEN_SET_HEADER = [
    *("faces", "threshold", "source", "target", "FPIR (false/strangers)", "FPIR 95%"),
    *("FPIR/target", "FNIR", "FNIR http"),
]
