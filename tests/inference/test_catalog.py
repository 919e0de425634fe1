"""The shipped catalog (models/) and how manifest and pack references resolve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.errors import ManifestInvalid, ModelNotFound
from app.inference.catalog import (
    default_catalog_dir,
    list_manifests,
    list_packs,
    load_pack,
    pack_of,
    resolve_manifest,
    resolve_pack,
)
from app.inference.manifest import file_sha256, load_manifest

CATALOG = default_catalog_dir()
SHIPPED_MANIFESTS = sorted(list_manifests())
SHIPPED_PACKS = sorted(list_packs())
# The manifests describing the files of the shared models folder (FACEREC_MODELS_DIR).
SHARED_FILE_MANIFESTS = ["scrfd_500m", "scrfd_2.5g", "w600k_mbf_int8"]
OFFICIAL_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7/"


def test_default_catalog_is_models_at_the_repository_root() -> None:
    repository_root = Path(__file__).resolve().parents[2]

    assert repository_root / "models" == CATALOG
    assert {"scrfd_500m", "buffalo_l_w600k_r50", "buffalo_s_det_500m"} <= set(SHIPPED_MANIFESTS)
    assert SHIPPED_PACKS == ["buffalo_l", "buffalo_s"]


@pytest.mark.parametrize("name", SHIPPED_MANIFESTS)
def test_every_shipped_manifest_validates_and_is_named_after_its_file(name: str) -> None:
    manifest = load_manifest(CATALOG / "manifests" / f"{name}.json")

    assert manifest.name == name
    assert "non-commercial" in manifest.licence


@pytest.mark.parametrize("name", SHIPPED_PACKS)
def test_every_shipped_pack_validates_and_matches_its_member_manifests(name: str) -> None:
    pack = load_pack(CATALOG / "packs" / f"{name}.json")

    assert pack.name == name
    assert pack.url == f"{OFFICIAL_RELEASE}{name}.zip"
    assert pack.unpinned() == []
    assert "non-commercial" in pack.licence
    for member in pack.members:
        assert member.manifest is not None
        manifest, _ = resolve_manifest(member.manifest)
        assert manifest.file == pack.member_file(member)
        assert manifest.sha256 == member.sha256
        assert manifest.source.pack == pack.name
        assert manifest.source.url == pack.url
        assert manifest.source.archive_sha256 == pack.archive_sha256
        assert manifest.source.archive_member == member.name
        assert manifest.import_steps.dequantize is False
        assert pack_of(manifest) == pack.name


@pytest.mark.parametrize("name", ["buffalo_l_w600k_r50", "buffalo_s_w600k_mbf"])
def test_official_recognizers_carry_an_uncalibrated_placeholder_threshold(name: str) -> None:
    manifest, _ = resolve_manifest(name)

    assert manifest.embedding_dim == 512
    assert manifest.thresholds is not None
    assert manifest.thresholds.match == pytest.approx(0.30)
    assert "NOT MEASURED" in (manifest.thresholds.calibration or "")


def test_buffalo_s_detector_is_the_same_file_as_the_shared_scrfd_500m() -> None:
    official, _ = resolve_manifest("buffalo_s_det_500m")
    shared, _ = resolve_manifest("scrfd_500m")

    assert official.sha256 == shared.sha256


@pytest.mark.parametrize("name", SHARED_FILE_MANIFESTS)
def test_shipped_manifest_matches_the_shared_model_file(name: str, models_dir: Path) -> None:
    manifest, _ = resolve_manifest(name)
    path = models_dir / manifest.file
    assert path.is_file(), f"{path} is missing from the shared models"

    assert file_sha256(path) == manifest.sha256


def test_resolve_manifest_by_catalog_name() -> None:
    manifest, path = resolve_manifest("scrfd_500m")

    assert manifest.name == "scrfd_500m"
    assert path == CATALOG / "manifests" / "scrfd_500m.json"


def test_resolve_manifest_by_absolute_and_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outdir = tmp_path / "run1"
    outdir.mkdir()
    shutil.copy(CATALOG / "manifests" / "w600k_mbf_int8.json", outdir / "manifest.json")

    by_absolute, absolute_path = resolve_manifest(str(outdir / "manifest.json"))
    monkeypatch.chdir(tmp_path)
    by_relative, relative_path = resolve_manifest("run1/manifest.json")

    assert by_absolute == by_relative
    assert by_absolute.name == "w600k_mbf_int8"
    assert absolute_path.parent == outdir
    assert relative_path.resolve().parent == outdir


def test_a_bare_json_file_name_is_a_path_not_a_catalog_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(CATALOG / "manifests" / "scrfd_500m.json", tmp_path / "mine.json")
    monkeypatch.chdir(tmp_path)

    manifest, path = resolve_manifest("mine.json")

    assert manifest.name == "scrfd_500m"
    assert path == Path("mine.json")


def test_unknown_name_lists_the_available_names() -> None:
    with pytest.raises(ModelNotFound, match=r"available: .*scrfd_500m") as raised:
        resolve_manifest("scrfd_9000g")

    assert "w600k_mbf_int8" in raised.value.message
    assert raised.value.details == {"name": "scrfd_9000g"}


def test_missing_manifest_path_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="manifest file not found"):
        resolve_manifest(str(tmp_path / "nope" / "manifest.json"))


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), (json.dumps({"name": "x"}), "is invalid")],
)
def test_broken_manifest_file_is_manifest_invalid(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(content)

    with pytest.raises(ManifestInvalid, match=message):
        resolve_manifest(str(path))


def test_catalog_directory_can_be_overridden(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    shutil.copy(CATALOG / "manifests" / "scrfd_2.5g.json", tmp_path / "manifests")

    assert list(list_manifests(tmp_path)) == ["scrfd_2.5g"]
    assert list_packs(tmp_path) == {}
    with pytest.raises(ModelNotFound, match=r"available: scrfd_2\.5g;"):
        resolve_manifest("scrfd_500m", tmp_path)


def test_empty_catalog_says_none_are_available(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"available: \(none\)"):
        resolve_pack("buffalo_l", tmp_path)


def test_resolve_pack_by_name_and_by_path() -> None:
    by_name, path = resolve_pack("buffalo_s")
    by_path, _ = resolve_pack(str(path))

    assert by_name == by_path
    assert [member.name for member in by_name.members] == ["det_500m.onnx", "w600k_mbf.onnx"]


def test_unknown_pack_lists_the_available_packs() -> None:
    with pytest.raises(ModelNotFound, match="available: buffalo_l, buffalo_s"):
        resolve_pack("antelopev2")


def test_manifest_outside_any_pack_has_no_pack() -> None:
    manifest, _ = resolve_manifest("w600k_mbf_int8")

    assert pack_of(manifest) is None
