"""Fine-tuning from the service's own gallery: real CFP faces enrolled through the HTTP API
(one subject poisoned with another person's photo), vetted, split, fine-tuned on the CPU
for a few steps, then judged by the promotion gate through the service's engines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.dependencies import require
from tests.training.lfw import mini_lfw as make_mini_lfw

torch = require("torch", "the [train] extra")

from app.core.types import NewFace  # noqa: E402
from app.gallery import open_gallery  # noqa: E402
from app.inference.catalog import resolve_manifest  # noqa: E402
from app.inference.manifest import ModelManifest, load_manifest  # noqa: E402
from app.main import create_app  # noqa: E402
from training.cli import main  # noqa: E402
from training.config import load_config  # noqa: E402
from training.from_gallery import read_collection, split_gallery  # noqa: E402
from training.gallery_data import face_set, photo_poses  # noqa: E402

BASE = "w600k_mbf_int8"
COLLECTION = "staff"
IDENTITIES = [f"{i:03d}" for i in range(11, 21)]  # 10 CFP identities
POISONED, INTRUDER = "011", "015"  # 011's enrolment includes a photo of 015


@pytest.fixture(scope="module")
def photos(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 frontal + 2 profile photos of each identity, in the CFP layout."""
    root = tmp_path_factory.mktemp("photos")
    for identity in IDENTITIES:
        for pose, count in (("frontal", 3), ("profile", 2)):
            (root / identity / pose).mkdir(parents=True)
            for number in range(1, count + 1):
                name = f"{number:02d}.jpg"
                source = data_root / "cfp" / "images" / identity / pose / name
                shutil.copy(source, root / identity / pose / name)
    return root


@pytest.fixture(scope="module")
def gallery(
    models_dir: Path, data_root: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The gallery folder after enrolling every identity through POST /enroll, and the
    face id the intruding photo got. The app is closed again (the gallery lock freed)."""
    data_dir = tmp_path_factory.mktemp("gallery")
    intruder_photo = data_root / "cfp" / "images" / INTRUDER / "frontal" / "05.jpg"
    intruder_face = ""
    with TestClient(create_app(make_settings(models_dir, data_dir))) as client:
        for identity in IDENTITIES:
            paths = sorted((photos / identity).rglob("*.jpg"))
            if identity == POISONED:
                paths.append(intruder_photo)
            response = client.post(
                f"/enroll?collection={COLLECTION}",
                data={"subject": identity, "face_policy": "largest"},
                files=[("images", (p.name, p.read_bytes())) for p in paths],
            )
            assert response.status_code == 201, response.text
            answer = response.json()
            assert answer["rejected"] == [], answer["rejected"]
            if identity == POISONED:
                intruder_face = answer["faces"][-1]["face_id"]
    return data_dir, intruder_face


def test_outlier_rejection_flags_the_poisoned_photo_and_leaves_it_out(
    gallery: tuple[Path, str],
) -> None:
    data_dir, intruder_face = gallery
    manifest = resolve_manifest(BASE)[0]
    assert manifest.embedding_dim is not None
    faces = read_collection(
        str(data_dir), COLLECTION, model_id=manifest.model_id, dim=manifest.embedding_dim
    )
    assert len(faces) == len(IDENTITIES) * 5 + 1
    config = load_config(
        None,
        {"gallery.collection": COLLECTION, "gallery.held_out": 3, "data.val_identities": 2},
    )
    split = split_gallery(faces, config, str(data_dir))
    flagged = {o["face_id"]: o for o in split.outliers}
    assert intruder_face in flagged
    assert flagged[intruder_face]["subject"] == POISONED
    assert flagged[intruder_face]["closest_other_subject"] == INTRUDER
    # Genuine faces (profiles included) stay: at most one other face is flagged.
    assert len(flagged) <= 2
    used = [*split.train.relpaths, *split.selection.relpaths, *split.held_out.relpaths]
    assert len(used) == len(faces) - len(flagged)
    assert not any(path.endswith(f"/{intruder_face}") for path in used)
    assert split.summary["outliers_left_out"] == len(flagged)
    assert set(split.document["held_out"]).isdisjoint(split.document["train"])
    assert set(split.document["held_out"]).isdisjoint(split.document["val"])


@pytest.fixture(scope="module")
def mini_lfw(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mini_lfw(data_root, tmp_path_factory.mktemp("lfw"))


@pytest.fixture(scope="module")
def run(
    gallery: tuple[Path, str],
    photos: Path,
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    data_dir, _ = gallery
    out = tmp_path_factory.mktemp("run")
    code = main(
        [
            "finetune",
            "--base",
            BASE,
            "--gallery",
            str(data_dir),
            "--collection",
            COLLECTION,
            "--photos",
            str(photos),
            "--out",
            str(out),
            "--models-dir",
            str(models_dir),
            "--cache-dir",
            str(tmp_path_factory.mktemp("cache")),
            "--val-identities",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--set",
            "gallery.held_out=3",
            "--set",
            "train.feature_views=2",
            "--set",
            "export.parity_faces=8",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_finetune_from_a_gallery_writes_a_manifest_with_its_data_summary(
    run: Path, gallery: tuple[Path, str]
) -> None:
    _, intruder_face = gallery
    manifest = load_manifest(run / "manifest.json")
    assert manifest.training is not None
    data = manifest.training["data"]
    assert isinstance(data, dict)
    assert data["source"] == "gallery"
    assert data["collection"] == COLLECTION
    assert data["outliers_left_out"] >= 1
    # 10 subjects: 3 held out, 4 to pick the epoch on (enough pairs to calibrate), 3 trained.
    subjects = (data["train_subjects"], data["selection_subjects"], data["held_out_subjects"])
    assert subjects == (3, 4, 3)
    assert data["pose_labels"] is True
    outliers = json.loads((run / "outliers.json").read_text(encoding="utf-8"))["outliers"]
    assert intruder_face in {o["face_id"] for o in outliers}
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    assert intruder_face not in split["held_out_faces"]
    assert len(split["held_out_faces"]) == 15


def test_promotion_gate_judges_the_candidate_on_held_out_subjects_and_records_it(
    run: Path,
    gallery: tuple[Path, str],
    photos: Path,
    mini_lfw: Path,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    data_dir, _ = gallery
    candidate = run / "manifest.json"
    before = load_manifest(candidate)
    code = main(
        [
            "evaluate",
            "--gate",
            "--recognizer",
            BASE,
            "--recognizer",
            str(candidate),
            "--gallery",
            str(data_dir),
            "--split",
            str(run / "split.json"),
            "--photos",
            str(photos),
            "--lfw",
            str(mini_lfw),
            "--degrade",
            "--out",
            str(tmp_path),
            "--models-dir",
            str(models_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ]
    )
    assert code == 0
    after = load_manifest(candidate)
    assert after.sha256 == before.sha256
    assert after.model_id == before.model_id
    assert after.metrics is not None
    promotion = after.metrics["promotion"]
    assert isinstance(promotion, dict)
    checks = {c["check"]: c for c in promotion["checks"]}
    assert set(checks) == {
        "frontal_profile TAR@FAR=1e-3",
        "frontal_profile TAR@FAR=1e-4",
        "rank-1 profile_to_frontal",
        "LFW 10-fold accuracy",
    }
    for check in checks.values():
        assert check["gain"] == pytest.approx(check["candidate"] - check["serving"], abs=1e-6)
        assert check["passed"] == (check["gain"] >= check["required_gain"] - 1e-12)
    assert promotion["promoted"] == all(c["passed"] for c in checks.values())
    assert promotion["data"]["held_out_subjects"] == 3
    assert promotion["data"]["held_out_faces"] == 15
    assert promotion["serving"] == resolve_manifest(BASE)[0].model_id
    serving_fp = promotion["figures"]["serving"]["verification"]["frontal_profile"]
    assert serving_fp["genuine_pairs"] == 3 * 3 * 2
    assert promotion["degraded"]["candidate"]["model_id"] == after.model_id
    report = (tmp_path / "report.txt").read_text(encoding="utf-8")
    assert "held-out identities, degraded" in report
    assert "promotion:" in report
    assert (tmp_path / "roc_frontal_profile.png").stat().st_size > 0
    assert (tmp_path / "roc_frontal_profile_degraded.png").stat().st_size > 0
    ModelManifest.model_validate(json.loads(candidate.read_text(encoding="utf-8")))


def test_promotion_gate_refuses_a_split_the_candidate_was_not_trained_with(
    run: Path, gallery: tuple[Path, str], models_dir: Path, tmp_path: Path
) -> None:
    data_dir, _ = gallery
    other = tmp_path / "split.json"
    document = json.loads((run / "split.json").read_text(encoding="utf-8"))
    document["held_out"], document["train"] = document["train"], document["held_out"]
    other.write_text(json.dumps(document), encoding="utf-8")
    code = main(
        [
            "evaluate",
            "--gate",
            "--recognizer",
            BASE,
            "--recognizer",
            str(run / "manifest.json"),
            "--gallery",
            str(data_dir),
            "--split",
            str(other),
            "--out",
            str(tmp_path / "out"),
            "--models-dir",
            str(models_dir),
            "--no-progress",
        ]
    )
    assert code == 2
    assert not (tmp_path / "out" / "report.txt").exists()


def test_faces_imported_with_import_photos_are_read_with_their_poses(
    photos: Path, models_dir: Path, tmp_path: Path
) -> None:
    """``facerec gallery import-photos`` reads the CFP layout as it is
    (DIR/<subject>/frontal|profile/<photo>), and ``--photos`` gives the poses back by
    image sha256."""
    layout = tmp_path / "cfp"
    for identity in IDENTITIES[:4]:
        shutil.copytree(photos / identity, layout / identity)
    data_dir = tmp_path / "gallery"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(FACEREC_DATA_DIR=str(data_dir), FACEREC_MODELS_DIR=str(models_dir))
    command = ["gallery", "import-photos", "--collection", COLLECTION, "--face-policy", "largest"]
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *command, str(layout)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    manifest = resolve_manifest(BASE)[0]
    assert manifest.embedding_dim is not None
    faces = read_collection(
        str(data_dir), COLLECTION, model_id=manifest.model_id, dim=manifest.embedding_dim
    )
    assert sorted(set(faces.subjects)) == IDENTITIES[:4]  # all enrolled
    assert len(faces) == 4 * 5
    assert faces.without_crop == 0
    labelled = face_set(faces, list(range(len(faces))), photo_poses(photos))
    assert sorted(labelled.poses()) == ["frontal"] * 12 + ["profile"] * 8


def test_a_postgres_gallery_gives_the_same_vetted_faces_as_the_embedded_one(
    gallery: tuple[Path, str], postgres_url: str
) -> None:
    """The same enrolled faces (crops and embeddings copied through the Gallery protocol)
    in the PostgreSQL backend: read, vetted and split alike, the intruder flagged."""
    data_dir, intruder_face = gallery
    manifest = resolve_manifest(BASE)[0]
    assert manifest.embedding_dim is not None
    model = {"model_id": manifest.model_id, "dim": manifest.embedding_dim}
    embedded = read_collection(str(data_dir), COLLECTION, **model)
    with closing(open_gallery(data_dir=data_dir, **model)) as source:
        stored = {
            face_id: embedding
            for batch in source.export_embeddings(COLLECTION, batch_size=100)
            for face_id, embedding in zip(batch.face_ids, batch.embeddings, strict=True)
        }
        copies = [
            (
                record.subject,
                NewFace(
                    image_sha256=record.image_sha256,
                    bbox=record.bbox,
                    det_score=record.det_score,
                    embedding=stored[record.face_id],
                    aligned_png=png,
                ),
            )
            for record, png in source.aligned_crops(COLLECTION)
        ]
    with closing(open_gallery(data_dir=data_dir, database_url=postgres_url, **model)) as target:
        assert target.add_faces_bulk(COLLECTION, copies).added == len(copies)
    shared = read_collection(postgres_url, COLLECTION, **model)
    assert len(shared) == len(embedded)
    order = {sha: row for row, sha in enumerate(shared.image_sha256)}
    rows = [order[sha] for sha in embedded.image_sha256]
    assert [shared.subjects[r] for r in rows] == list(embedded.subjects)
    np.testing.assert_array_equal(shared.crops[rows], embedded.crops)
    np.testing.assert_allclose(shared.embeddings[rows], embedded.embeddings, atol=1e-6)
    config = load_config(
        None,
        {"gallery.collection": COLLECTION, "gallery.held_out": 3, "data.val_identities": 2},
    )
    intruder_sha = embedded.image_sha256[embedded.face_ids.index(intruder_face)]
    split = split_gallery(shared, config, postgres_url)
    flagged = {shared.image_sha256[shared.face_ids.index(o["face_id"])] for o in split.outliers}
    assert intruder_sha in flagged
    assert split.document["source"] == postgres_url  # no password in it to drop
