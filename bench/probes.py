"""Real probe sets for the scale benchmarks: mates to enroll, other photos to search with.

The real faces (``real_faces``) are split by identity, never by photo, into:

* **probe identities**: some of their photos are enrolled (the *mates*), their other
  photos are the *probes*; the benchmark looks for each probe's mate among the
  distractors;
* **background identities**: everything else, used only to fit the distractor model
  (``distractors``), so no distractor is derived from a probe identity's faces.

Per data set (deterministic for a seed):

* CelebA (30 identities, in-the-wild photos): all are probe identities; the first
  ``CELEBA_ENROLLED`` photos by path are enrolled, the rest are probes.
* CFP: ``CFP_IDENTITIES`` identities; frontal 01-03 enrolled, frontal 10 and profile 04
  probed (profile-to-frontal: the hard case).
* LFW identities with at least two photos: ``LFW_IDENTITIES`` of them; the first photo
  enrolled, the second probed.

A later benchmark (open-set calibration) adds probes of identities that are not
enrolled at all; ``ProbeSet`` keeps the three parts apart for that.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from bench.real_faces import RealFaces

CELEBA_ENROLLED = 3
CFP_IDENTITIES = 150
CFP_ENROLLED = ("frontal/01.jpg", "frontal/02.jpg", "frontal/03.jpg")
CFP_PROBES = ("frontal/10.jpg", "profile/04.jpg")
LFW_IDENTITIES = 600


def subject_of(identity: str) -> str:
    """The gallery subject an identity is enrolled as ('/' is not allowed in subjects)."""
    return identity.replace("/", ":")


@dataclass(frozen=True, slots=True)
class ProbeSet:
    mates: RealFaces  # enrolled: subject = identity
    probes: RealFaces  # searched: the right answer is their identity
    background: RealFaces  # neither: fits the distractor model

    def describe(self) -> str:
        return (
            f"{len(set(self.mates.identities))} probe identities, {len(self.mates)} mates "
            f"enrolled, {len(self.probes)} probes; {len(set(self.background.identities))} "
            f"background identities ({len(self.background)} faces)"
        )


def split_probe_set(faces: RealFaces, *, seed: int) -> ProbeSet:
    rng = np.random.default_rng(seed)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, identity in enumerate(faces.identities):
        rows_of[identity].append(row)
    mates: list[int] = []
    probes: list[int] = []
    probe_identities: set[str] = set()

    def take(identity: str, enrolled: list[int], probed: list[int]) -> None:
        if enrolled and probed:
            mates.extend(enrolled)
            probes.extend(probed)
            probe_identities.add(identity)

    for identity in _of_dataset(rows_of, "celeba"):
        rows = sorted(rows_of[identity], key=lambda row: faces.paths[row])
        take(identity, rows[:CELEBA_ENROLLED], rows[CELEBA_ENROLLED:])
    cfp = _of_dataset(rows_of, "cfp")
    for identity in rng.permutation(cfp)[:CFP_IDENTITIES].tolist():
        by_file = {faces.paths[row].split("/", 3)[-1]: row for row in rows_of[identity]}
        take(
            identity,
            [by_file[name] for name in CFP_ENROLLED if name in by_file],
            [by_file[name] for name in CFP_PROBES if name in by_file],
        )
    lfw = [identity for identity in _of_dataset(rows_of, "lfw") if len(rows_of[identity]) > 1]
    for identity in rng.permutation(lfw)[:LFW_IDENTITIES].tolist():
        rows = sorted(rows_of[identity], key=lambda row: faces.paths[row])
        take(identity, rows[:1], rows[1:2])
    background = [
        row for row, identity in enumerate(faces.identities) if identity not in probe_identities
    ]
    return ProbeSet(
        mates=faces.subset(mates), probes=faces.subset(probes), background=faces.subset(background)
    )


def _of_dataset(rows_of: dict[str, list[int]], dataset: str) -> list[str]:
    return sorted(identity for identity in rows_of if identity.startswith(f"{dataset}/"))
