"""What ``POST /admin/models/activate`` accepts as a recognizer manifest (app.swap)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import ModelSwapRejected
from app.swap import MAX_MANIFEST_BYTES, check_recognizer_manifest, gate_refused

REPO = Path(__file__).resolve().parents[1]
FAST = REPO / "models" / "manifests" / "w600k_mbf_int8_fast.json"


def variant(tmp_path: Path, **changes: object) -> Path:
    document = json.loads(FAST.read_text())
    document.update(changes)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(document))
    return path


def reason_for(path: Path | str, models_dir: Path) -> str:
    with pytest.raises(ModelSwapRejected) as caught:
        check_recognizer_manifest(str(path), models_dir=models_dir)
    return str(caught.value.details["reason"])


def test_a_catalog_recognizer_passes_with_its_file_verified(models_dir: Path) -> None:
    checked = check_recognizer_manifest(str(FAST), models_dir=models_dir)

    assert checked.manifest.name == "w600k_mbf_int8_fast"
    assert checked.path == FAST
    assert len(checked.sha256) == 64
    assert not gate_refused(checked.manifest)  # never gated: not refused


def test_a_model_file_that_is_not_the_one_described_is_refused(
    tmp_path: Path, models_dir: Path
) -> None:
    assert reason_for(variant(tmp_path, sha256="0" * 64), models_dir) == "model_checksum_mismatch"


@pytest.mark.parametrize("target", ["/dev/zero", "/proc/self/environ"])
def test_devices_and_special_files_are_not_read(
    tmp_path: Path, models_dir: Path, target: str
) -> None:
    link = tmp_path / "manifest.json"
    link.symlink_to(target)

    assert reason_for(link, models_dir) in {"not_found", "not_a_manifest"}


def test_a_huge_file_is_not_read(tmp_path: Path, models_dir: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))

    assert reason_for(path, models_dir) == "not_a_manifest"


def test_the_message_never_carries_the_file_contents(tmp_path: Path, models_dir: Path) -> None:
    path = tmp_path / "secret.json"
    path.write_text('{"name": "s3cr3t-value", "kind": "recognizer"}')

    with pytest.raises(ModelSwapRejected) as caught:
        check_recognizer_manifest(str(path), models_dir=models_dir)
    assert "s3cr3t" not in caught.value.message
    assert "s3cr3t" not in json.dumps(caught.value.details)


def test_a_candidate_the_gate_decided_against_is_flagged(tmp_path: Path, models_dir: Path) -> None:
    refused = variant(tmp_path, metrics={"promotion": {"promoted": False, "checks": []}})

    checked = check_recognizer_manifest(str(refused), models_dir=models_dir)

    assert gate_refused(checked.manifest)
    promoted = variant(tmp_path, metrics={"promotion": {"promoted": True}})
    assert not gate_refused(
        check_recognizer_manifest(str(promoted), models_dir=models_dir).manifest
    )
