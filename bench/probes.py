"""Real probe sets for the scale benchmarks: mates to enroll, other photos to search with.

The real faces (``real_faces``) are split by identity, never by photo, into:

* **probe identities**: some of their photos are enrolled (the *mates*), their other
  photos are the *probes*; the benchmark looks for each probe's mate among the
  distractors;
* **background identities**: used only to fit the distractor model (``distractors``),
  so no distractor is derived from a probe identity's faces;
* **strangers**: never enrolled and never a distractor's source (a distractor carries a
  real face's deviation from its identity's mean, so a stranger whose face seeded one
  would be matched by construction); searched to measure open-set false positives.

Background and strangers share what the probe identities leave over, by the sha256 of
the identity's name (stable across seeds and data-set growth): one in
``BACKGROUND_SHARE`` identities is background, the rest are strangers, except
**cross-data-set duplicates**: names do not link data sets (``bench.faces``: CFP's
Al Pacino is LFW's Al_Pacino, CelebA has numbers), so a would-be stranger whose mean
face is at least ``LINK_SIMILARITY`` from a probe identity's mean face *of another data
set* is taken to be that person and left out (neither stranger nor background).

Per data set (deterministic for a seed):

* CelebA (30 identities, in-the-wild photos): all are probe identities; the first
  ``CELEBA_ENROLLED`` photos by path are enrolled, the rest are probes.
* CFP: ``CFP_IDENTITIES`` identities; frontal 01-03 enrolled, frontal 10 and profile 04
  probed (profile-to-frontal: the hard case).
* LFW identities with at least two photos: ``LFW_IDENTITIES`` of them; the first photo
  enrolled, the second probed.

"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from app.core.types import FloatArray
from bench.real_faces import RealFaces

CELEBA_ENROLLED = 3
CFP_IDENTITIES = 150
CFP_ENROLLED = ("frontal/01.jpg", "frontal/02.jpg", "frontal/03.jpg")
CFP_PROBES = ("frontal/10.jpg", "profile/04.jpg")
LFW_IDENTITIES = 600
# One in this many left-over identities fits the distractor model, the others are
# strangers: ~1,300 identities (over 512, so the centres' covariance has full rank in
# 512 dimensions) and ~2,600 faces with real deviations; the strangers get the rest.
BACKGROUND_SHARE = 3
# Mean face against mean face. Within one data set, where names do tell people apart,
# no two different identities' means reach 0.45 but for two LFW label errors; across
# data sets 44 would-be strangers are at 0.5-0.9 from a probe identity (Al Pacino,
# Andre Agassi, ... in both LFW and CFP) and 2 at 0.40-0.50 (measured 2026-12-01).
LINK_SIMILARITY = 0.5


def subject_of(identity: str) -> str:
    """The gallery subject an identity is enrolled as ('/' is not allowed in subjects)."""
    return identity.replace("/", ":")


@dataclass(frozen=True, slots=True)
class ProbeSet:
    mates: RealFaces  # enrolled: subject = identity
    probes: RealFaces  # searched: the right answer is their identity
    background: RealFaces  # neither: fits the distractor model
    strangers: RealFaces  # never enrolled, no distractor's source: open-set probes
    linked: list[str]  # would-be strangers taken for a probe identity of another data set

    def describe(self) -> str:
        return (
            f"{len(set(self.mates.identities))} probe identities, {len(self.mates)} mates "
            f"enrolled, {len(self.probes)} probes; {len(set(self.background.identities))} "
            f"background identities ({len(self.background)} faces); "
            f"{len(set(self.strangers.identities))} stranger identities "
            f"({len(self.strangers)} faces; {len(self.linked)} more left out as "
            "probe identities of another data set)"
        )


def is_background(identity: str) -> bool:
    """Whether a left-over identity fits the distractor model (else it is a stranger)."""
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BACKGROUND_SHARE == 0


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
    left_over = [
        (row, identity)
        for row, identity in enumerate(faces.identities)
        if identity not in probe_identities
    ]
    background = [row for row, identity in left_over if is_background(identity)]
    candidates = [row for row, identity in left_over if not is_background(identity)]
    linked = cross_dataset_duplicates(faces, candidates, mates)
    strangers = [row for row in candidates if faces.identities[row] not in linked]
    return ProbeSet(
        mates=faces.subset(mates),
        probes=faces.subset(probes),
        background=faces.subset(background),
        strangers=faces.subset(strangers),
        linked=sorted(linked),
    )


def cross_dataset_duplicates(faces: RealFaces, rows: list[int], reference: list[int]) -> set[str]:
    """Identities of ``rows`` whose mean face is at least ``LINK_SIMILARITY`` from the
    mean face of an identity of ``reference`` in another data set."""
    names, centres = identity_centres(faces, rows)
    reference_names, reference_centres = identity_centres(faces, reference)
    if not names or not reference_names:
        return set()
    similarities = centres @ reference_centres.T
    datasets = np.array([name.split("/", 1)[0] for name in names])
    reference_datasets = np.array([name.split("/", 1)[0] for name in reference_names])
    other = datasets[:, None] != reference_datasets[None, :]
    best = np.where(other, similarities, -1.0).max(axis=1)
    return {name for name, value in zip(names, best, strict=True) if value >= LINK_SIMILARITY}


def identity_centres(faces: RealFaces, rows: list[int]) -> tuple[list[str], FloatArray]:
    """Each identity of ``rows`` and its normalised mean embedding."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        rows_of[faces.identities[row]].append(row)
    names = list(rows_of)
    if not names:
        return [], np.empty((0, faces.embeddings.shape[1]), np.float32)
    centres = np.stack([faces.embeddings[rows_of[name]].mean(axis=0) for name in names])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return names, centres.astype(np.float32)


def _of_dataset(rows_of: dict[str, list[int]], dataset: str) -> list[str]:
    return sorted(identity for identity in rows_of if identity.startswith(f"{dataset}/"))
