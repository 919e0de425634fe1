"""bench.scale's open-set parts: who may be a stranger, and how FPIR/FNIR are counted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.core.types import FloatArray, NewFace
from app.gallery.embedded import EmbeddedGallery
from bench.probes import (
    LINK_SIMILARITY,
    ProbeSet,
    cross_dataset_duplicates,
    is_background,
    split_probe_set,
    subject_of,
)
from bench.real_faces import RealFaces
from bench.scale_openset import AppliedThreshold, open_set_rates, poisson_interval

DIM = 32
COLLECTION = "scale"


def unit(rows: np.ndarray) -> FloatArray:
    result: FloatArray = (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)
    return result


def stranger_names(count: int, *, background: bool) -> list[str]:
    """LFW-style identities on the stranger side (or the background side) of the split."""
    names = (f"lfw/Person_{number}" for number in range(10_000))
    return [name for name in names if is_background(name) == background][:count]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# --- the split ------------------------------------------------------------------------------


def faces_with_a_cross_dataset_twin(rng: np.random.Generator) -> tuple[RealFaces, str]:
    """A CFP probe identity, 20 LFW pairs (probe identities), 60 LFW single photos (left
    over), one of which is the CFP person under an LFW name."""
    identities: list[str] = []
    paths: list[str] = []
    rows: list[FloatArray] = []
    cfp_face = unit(rng.standard_normal(DIM))
    for name in ("frontal/01.jpg", "frontal/02.jpg", "frontal/03.jpg", "frontal/10.jpg"):
        identities.append("cfp/001")
        paths.append(f"cfp/images/001/{name}")
        rows.append(unit(cfp_face + 0.05 * rng.standard_normal(DIM)))
    for number in range(20):
        centre = rng.standard_normal(DIM)
        for photo in (1, 2):
            identities.append(f"lfw/Pair_{number}")
            paths.append(f"lfw/images/Pair_{number}/Pair_{number}_{photo:04d}.jpg")
            rows.append(unit(centre + 0.3 * rng.standard_normal(DIM)))
    twin = stranger_names(1, background=False)[0]
    singles = stranger_names(30, background=False)[1:] + stranger_names(30, background=True)
    for name in [twin, *singles]:
        identities.append(name)
        paths.append(f"{name.replace('lfw/', 'lfw/images/')}/x_0001.jpg")
        rows.append(
            unit(cfp_face + 0.05 * rng.standard_normal(DIM))
            if name == twin
            else unit(rng.standard_normal(DIM))
        )
    faces = RealFaces("model", identities, paths, np.stack(rows).astype(np.float32))
    return faces, twin


def test_strangers_are_neither_probe_identities_nor_background(rng: np.random.Generator) -> None:
    faces, _ = faces_with_a_cross_dataset_twin(rng)

    split = split_probe_set(faces, seed=1)

    strangers = set(split.strangers.identities)
    assert strangers
    assert not strangers & set(split.mates.identities)
    assert not strangers & set(split.background.identities)
    assert all(is_background(name) for name in split.background.identities)
    every = set(faces.identities)
    parts = [split.mates, split.background, split.strangers]
    assert set().union(*(set(part.identities) for part in parts)) | set(split.linked) == every


def test_a_would_be_stranger_who_is_a_probe_identity_of_another_data_set_is_left_out(
    rng: np.random.Generator,
) -> None:
    faces, twin = faces_with_a_cross_dataset_twin(rng)

    split = split_probe_set(faces, seed=1)

    assert "cfp/001" in split.mates.identities
    assert split.linked == [twin]
    assert twin not in split.strangers.identities


def test_identities_of_one_data_set_are_never_linked_by_their_faces(
    rng: np.random.Generator,
) -> None:
    """Within a data set names tell people apart: two LFW names with one face stay two."""
    face = unit(rng.standard_normal(DIM))
    faces = RealFaces("model", ["lfw/A", "lfw/B"], ["a.jpg", "b.jpg"], np.stack([face, face]))

    assert cross_dataset_duplicates(faces, [1], [0]) == set()


def test_cross_dataset_link_is_at_the_documented_similarity(rng: np.random.Generator) -> None:
    base = unit(rng.standard_normal(DIM))
    draw = rng.standard_normal(DIM)
    other = unit(draw - (draw @ base) * base)  # orthogonal to base

    def at(similarity: float) -> FloatArray:
        return unit(similarity * base + np.sqrt(1 - similarity**2) * other)

    faces = RealFaces(
        "model",
        ["cfp/001", "lfw/Above", "lfw/Below"],
        ["c.jpg", "a.jpg", "b.jpg"],
        np.stack([base, at(LINK_SIMILARITY + 0.01), at(LINK_SIMILARITY - 0.01)]),
    )

    assert cross_dataset_duplicates(faces, [1, 2], [0]) == {"lfw/Above"}


# --- the counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "low", "high"),
    # Garwood's exact 95% limits, as tabulated (e.g. Ulm 1990, Am J Epidemiol 131:373).
    [(0, 0.0, 3.689), (1, 0.0253, 5.572), (6, 2.202, 13.06), (10, 4.795, 18.39)],
)
def test_poisson_interval_matches_the_tabulated_exact_limits(
    events: int, low: float, high: float
) -> None:
    found = poisson_interval(events)

    assert found == pytest.approx((low, high), rel=2e-3, abs=1e-4)


def test_the_threshold_is_what_most_answers_reported_and_the_rest_are_counted() -> None:
    main = (0.5, "impostor_tail", 0.001, 1000)
    other = (0.4, "match_floor", 0.001, 999)

    applied = AppliedThreshold.of([main, main, other, main])

    assert (applied.threshold, applied.source, applied.gallery_size) == (0.5, "impostor_tail", 1000)
    assert (applied.answers, applied.others) == (3, 1)
    with pytest.raises(ValueError, match="no /identify answer"):
        AppliedThreshold.of([])


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[EmbeddedGallery]:
    opened = EmbeddedGallery(tmp_path / "g", model_id="model", dim=DIM)
    yield opened
    opened.close()


def new_face(embedding: FloatArray) -> NewFace:
    digest = hashlib.sha256(embedding.tobytes()).hexdigest()
    return NewFace(digest, (0.0, 0.0, 9.0, 9.0), 1.0, embedding)


def real_faces(names: list[str], rows: list[FloatArray]) -> RealFaces:
    return RealFaces("model", names, [f"{name}.jpg" for name in names], np.stack(rows))


def test_open_set_rates_count_strangers_above_and_probes_below_the_threshold(
    gallery: EmbeddedGallery, rng: np.random.Generator
) -> None:
    enrolled = unit(rng.standard_normal((20, DIM)))
    names = [f"lfw/Mate_{number}" for number in range(20)]
    gallery.add_faces_bulk(
        COLLECTION,
        [(subject_of(name), new_face(row)) for name, row in zip(names, enrolled, strict=True)],
    )
    # Strangers: 3 of 40 are near-copies of an enrolled face (similarity ~0.99), the
    # rest orthogonal to every enrolled face (similarity 0).
    far = [
        unit(row - (enrolled.T @ np.linalg.lstsq(enrolled.T, row, rcond=None)[0]))
        for row in rng.standard_normal((37, DIM))
    ]
    near = [unit(enrolled[number] + 0.02 * rng.standard_normal(DIM)) for number in (0, 5, 9)]
    strangers = real_faces(stranger_names(40, background=False), [*near, *far])
    # Probes: mates 0-9 photographed again (match), mates 10-19 far from their face.
    probe_rows = [unit(enrolled[number] + 0.02 * rng.standard_normal(DIM)) for number in range(10)]
    probe_rows += far[:10]
    probes = real_faces(names, probe_rows)
    empty = real_faces(names[:1], [enrolled[0]]).subset([])
    split = ProbeSet(mates=empty, probes=probes, background=empty, strangers=strangers, linked=[])
    applied = AppliedThreshold(0.9, "impostor_tail", 1e-3, 20, 20, 0)

    rates, top = open_set_rates(gallery, COLLECTION, split, applied)

    assert (rates["false_matches"], rates["strangers"]) == (3, 40)
    assert rates["fpir"] == pytest.approx(3 / 40)
    listed = [(path, subject) for path, subject, _ in rates["false_match_list"]]
    assert listed == [
        (strangers.paths[row], subject_of(names[mate])) for row, mate in enumerate((0, 5, 9))
    ]
    assert rates["fnir"] == pytest.approx(10 / 20)
    assert top[:10] == [subject_of(name) for name in names[:10]]
    low, high = rates["fpir_95"]
    assert low < 3 / 40 < high
