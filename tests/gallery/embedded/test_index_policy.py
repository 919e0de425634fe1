"""The index policy's search-effort rule: efSearch as a function of a collection's size."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.gallery.embedded import EmbeddedGallery
from app.gallery.embedded.index import CollectionIndex
from app.gallery.embedded.snapshotter import SnapshotPolicy
from app.gallery.embedded.vectors import DEFAULT_POLICY, FaissVectors, IndexKind, IndexPolicy
from tests.gallery.conftest import DIM, MODEL_ID, NearVector, UnitVectors
from tests.gallery.embedded.test_index_snapshots import enroll, top_subjects

DOCS = Path(__file__).resolve().parents[3] / "docs" / "scale.md"

# Sizes across the range a collection can have, up to far beyond the benchmarked 1M.
SIZES = [0, 1, 2, 19_999, 20_000, 99_999, 100_000, 100_001, 250_000, 400_000, 10**6, 10**7]


@pytest.mark.parametrize(
    "policy",
    [
        DEFAULT_POLICY,
        IndexPolicy(hnsw_ef_search=40, hnsw_ef_reference_faces=1_000, hnsw_ef_search_max=300),
        IndexPolicy(hnsw_ef_search=64, hnsw_ef_search_max=64),
    ],
    ids=["default", "small", "fixed"],
)
def test_ef_search_never_decreases_and_stays_within_its_bounds(policy: IndexPolicy) -> None:
    values = [policy.ef_search_for(size) for size in sorted(SIZES + list(range(0, 10**6, 7919)))]

    assert values == sorted(values)
    assert min(values) == policy.hnsw_ef_search
    assert max(values) <= policy.hnsw_ef_search_max


def test_ef_search_is_the_base_value_up_to_the_reference_size() -> None:
    policy = DEFAULT_POLICY
    for size in (0, policy.hnsw_min_faces, policy.hnsw_ef_reference_faces):
        assert policy.ef_search_for(size) == policy.hnsw_ef_search
    assert policy.ef_search_for(policy.hnsw_ef_reference_faces + 1) > policy.hnsw_ef_search


def test_the_documented_search_effort_is_the_policys() -> None:
    """docs/scale.md's efSearch table says what ``DEFAULT_POLICY`` does at those sizes."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    header = next(line for line in lines if line.startswith("| live faces |"))
    values = next(line for line in lines if line.startswith("| efSearch |"))

    def numbers(line: str) -> list[int]:
        return [int(cell.strip().replace(",", "")) for cell in line.strip("|").split("|")[1:]]

    sizes, documented = numbers(header), numbers(values)

    assert len(sizes) == len(documented) >= 3
    assert documented == [DEFAULT_POLICY.ef_search_for(size) for size in sizes]


@pytest.mark.parametrize("growth", [1.001, 1.5, 4, 16, 100])
def test_ef_search_grows_in_proportion_to_the_size(growth: float) -> None:
    policy = IndexPolicy(hnsw_ef_search=50, hnsw_ef_reference_faces=1_000, hnsw_ef_search_max=10**6)

    value = policy.ef_search_for(round(growth * policy.hnsw_ef_reference_faces))

    exact = policy.hnsw_ef_search * growth
    # Rounded up to a step no larger than 16, never down.
    assert exact <= value < exact + 16


def test_ef_search_stops_at_its_cap() -> None:
    policy = DEFAULT_POLICY
    ratio = policy.hnsw_ef_search_max / policy.hnsw_ef_search
    huge = math.ceil(policy.hnsw_ef_reference_faces * ratio)

    assert policy.ef_search_for(huge) == policy.hnsw_ef_search_max
    assert policy.ef_search_for(100 * huge) == policy.hnsw_ef_search_max


@pytest.mark.parametrize(
    "fields",
    [
        {"hnsw_ef_search": 256, "hnsw_ef_search_max": 255},
        {"hnsw_ef_reference_faces": 0},
        {"hnsw_ef_search": 0},
    ],
)
def test_inconsistent_search_effort_is_refused(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="ef"):
        IndexPolicy(**fields)


def test_a_search_uses_the_effort_of_the_collections_current_size(
    unit_vectors: UnitVectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = IndexPolicy(
        hnsw_min_faces=200,
        hnsw_m=16,
        hnsw_ef_construction=40,
        hnsw_ef_search=64,
        hnsw_ef_reference_faces=300,
        hnsw_ef_search_max=512,
    )
    index = CollectionIndex(DIM, policy, IndexKind.HNSW)
    seen: list[int] = []
    search = FaissVectors.search

    def spy(self: FaissVectors, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["ef_search"])
        return search(self, *args, **kwargs)

    monkeypatch.setattr(FaissVectors, "search", spy)
    sizes = (300, 600, 1200)  # 1x, 2x and 4x the reference size
    vectors = unit_vectors(sizes[-1])
    for start, stop in zip((0, *sizes[:-1]), sizes, strict=True):
        ids = list(range(start + 1, stop + 1))
        index.add(ids, vectors[start:stop], [f"s{i}" for i in ids], [f"f{i}" for i in ids])
        index.search(vectors[:1], top_k=1)

    assert seen == [policy.ef_search_for(size) for size in sizes]
    assert seen[0] < seen[1] < seen[2]


def test_a_snapshot_loads_whatever_search_effort_the_policy_now_gives(
    gallery_dir: Path, unit_vectors: UnitVectors, near: NearVector
) -> None:
    """efSearch is not part of a snapshot: one written under a fixed effort (the old
    policy) is read back, not rebuilt, under a size-dependent one, with the same answers."""
    at_close = SnapshotPolicy(min_faces=0, every_changes=10**9, min_interval_s=0)
    common = {"hnsw_min_faces": 200, "hnsw_m": 16, "hnsw_ef_construction": 40}
    fixed = IndexPolicy(**common, hnsw_ef_search=64, hnsw_ef_search_max=64)
    growing = IndexPolicy(
        **common, hnsw_ef_search=64, hnsw_ef_reference_faces=200, hnsw_ef_search_max=256
    )
    vectors = unit_vectors(400)
    probes = np.stack([near(vector) for vector in vectors])
    gallery = EmbeddedGallery(
        gallery_dir, model_id=MODEL_ID, dim=DIM, index_policy=fixed, snapshot_policy=at_close
    )
    enroll(gallery, vectors)
    assert gallery.wait_until_indexed(timeout_s=120)
    before = top_subjects(gallery, probes)
    gallery.close()

    reopened = EmbeddedGallery(
        gallery_dir, model_id=MODEL_ID, dim=DIM, index_policy=growing, snapshot_policy=at_close
    )
    try:
        assert reopened.recovery.from_snapshot
        assert reopened.index_kinds() == {"c": "hnsw"}
        assert top_subjects(reopened, probes) == before
    finally:
        reopened.close()
