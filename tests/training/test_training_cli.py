"""``python -m training``: a tiny real fine-tune, its outputs, and the service using them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.dependencies import require

torch = require("torch", "the [train] extra")

from app.config import Settings  # noqa: E402
from app.errors import GalleryModelMismatch  # noqa: E402
from app.gallery.store import Gallery  # noqa: E402
from app.inference.manifest import file_sha256, load_manifest  # noqa: E402
from app.main import create_app  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.config import ConfigError, load_config  # noqa: E402

BASE_MODEL = "w600k_mbf_int8.onnx"
IDENTITIES = [f"{i:03d}" for i in range(11, 21)]  # 10 CFP identities


def photo(root: Path, identity: str, pose: str, number: int) -> Path:
    return root / identity / pose / f"{number:02d}.jpg"


@pytest.fixture(scope="module")
def small_data(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 CFP identities, 3 frontal and 2 profile photos each, in the CFP layout."""
    root = tmp_path_factory.mktemp("cfp")
    for identity in IDENTITIES:
        for pose, count in (("frontal", 3), ("profile", 2)):
            target = root / identity / pose
            target.mkdir(parents=True)
            for number in range(1, count + 1):
                shutil.copy(photo(data_root / "cfp" / "images", identity, pose, number), target)
    return root


@pytest.fixture(scope="module")
def common_args(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    cache = tmp_path_factory.mktemp("crop-cache")
    return ["--models-dir", str(models_dir), "--cache-dir", str(cache), "--no-progress"]


@pytest.fixture(scope="module")
def finetuned(
    small_data: Path,
    models_dir: Path,
    common_args: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = main(
        [
            "finetune",
            "--base",
            str(models_dir / BASE_MODEL),
            "--data",
            str(small_data),
            "--out",
            str(out),
            "--val-identities",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--set",
            "train.feature_views=2",
            "--set",
            "export.parity_faces=8",
            *common_args,
        ]
    )
    assert code == 0
    return out


def test_finetune_writes_the_model_manifest_metrics_and_plots(finetuned: Path):
    for name in (
        "model.onnx",
        "manifest.json",
        "metrics.csv",
        "metrics.json",
        "config.json",
        "split.json",
        "report.txt",
        "roc_frontal_profile.png",
        "roc_frontal_frontal.png",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (finetuned / name).is_file(), name
    manifest = load_manifest(finetuned / "manifest.json")
    assert manifest.kind == "recognizer"
    assert manifest.embedding_dim == 512
    assert manifest.sha256 == file_sha256(finetuned / "model.onnx")
    assert manifest.augment.flip
    assert manifest.thresholds is not None
    assert -1 <= manifest.thresholds.match <= 1
    assert manifest.thresholds.far == pytest.approx(1e-2)  # too few pairs for 1e-4
    assert manifest.training is not None
    assert manifest.training["parity_min_cosine"] >= 0.999
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert {"base", "finetuned", "timings"} <= set(metrics)
    fp = metrics["finetuned"]["verification"]["frontal_profile"]
    assert fp["genuine_pairs"] == 4 * 3 * 2  # val identities x frontal x profile
    split = json.loads((finetuned / "split.json").read_text())
    assert len(split["val"]) == 4
    assert not set(split["val"]) & set(split["train"])
    assert len((finetuned / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_service_loads_the_exported_manifest_and_identifies_with_it(
    finetuned: Path, small_data: Path, models_dir: Path, tmp_path: Path
):
    manifest_path = finetuned / "manifest.json"
    settings = Settings(
        models_dir=models_dir, data_dir=tmp_path, recognizer=str(manifest_path), auth=False
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready").json()
        assert ready["recognizer"]["model_id"] == load_manifest(manifest_path).model_id
        for identity in IDENTITIES[:3]:
            response = client.post(
                "/enroll",
                data={"subject": identity},
                files=[
                    ("images", (p.name, p.read_bytes()))
                    for p in (
                        photo(small_data, identity, "frontal", 1),
                        photo(small_data, identity, "frontal", 2),
                    )
                ],
            )
            assert response.status_code == 201, response.text
        probe = photo(small_data, IDENTITIES[1], "frontal", 3)
        response = client.post("/identify", files={"image": (probe.name, probe.read_bytes())})
        assert response.status_code == 200, response.text
        (face,) = response.json()["faces"]
        assert face["match"] is not None
        assert face["match"]["subject"] == IDENTITIES[1]
        assert response.json()["threshold"] == pytest.approx(
            load_manifest(manifest_path).thresholds.match  # type: ignore[union-attr]
        )


def test_evaluate_scores_several_recognizers_on_the_validation_identities(
    finetuned: Path, small_data: Path, common_args: list[str], tmp_path: Path
):
    code = main(
        [
            "evaluate",
            "--recognizer",
            "w600k_mbf_int8",
            "--recognizer",
            str(finetuned / "manifest.json"),
            "--data",
            str(small_data),
            "--split",
            str(finetuned / "split.json"),
            "--out",
            str(tmp_path),
            *common_args,
        ]
    )
    assert code == 0
    models = json.loads((tmp_path / "metrics.json").read_text())["models"]
    assert set(models) == {"w600k_mbf_int8", "finetuned"}
    for summary in models.values():
        assert summary["verification"]["frontal_profile"]["genuine_pairs"] == 4 * 3 * 2
    assert (tmp_path / "roc_frontal_profile.png").is_file()


def test_export_rebuilds_a_manifest_from_a_checkpoint(
    finetuned: Path, small_data: Path, models_dir: Path, common_args: list[str], tmp_path: Path
):
    code = main(
        [
            "export",
            "--base",
            str(models_dir / BASE_MODEL),
            "--checkpoint",
            str(finetuned / "checkpoints" / "last.pt"),
            "--data",
            str(small_data),
            "--out",
            str(tmp_path),
            "--name",
            "from-checkpoint",
            "--set",
            "export.parity_faces=4",
            *common_args,
        ]
    )
    assert code == 0
    manifest = load_manifest(tmp_path / "manifest.json")
    assert manifest.name == "from-checkpoint"
    assert manifest.sha256 == file_sha256(tmp_path / "model.onnx")


def test_reembed_moves_a_gallery_to_the_new_recognizer(
    finetuned: Path, small_data: Path, models_dir: Path, tmp_path: Path
):
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    identity = IDENTITIES[0]
    enrolled = photo(small_data, identity, "frontal", 1)
    with TestClient(
        create_app(Settings(models_dir=models_dir, data_dir=old_dir, auth=True))
    ) as client:
        store = client.app.state.runtime.guard.store  # type: ignore[attr-defined]
        key = {"X-API-Key": store.create(name="app", collections=["*"], admin=False).token}
        response = client.post(
            "/enroll",
            data={"subject": identity},
            files=[("images", (enrolled.name, enrolled.read_bytes()))],
            headers=key,
        )
        assert response.status_code == 201, response.text
    manifest = load_manifest(finetuned / "manifest.json")
    with pytest.raises(GalleryModelMismatch):  # why re-embedding is needed at all
        Gallery(old_dir, model_id=manifest.model_id, dim=512)
    code = main(
        [
            "reembed",
            "--data-dir",
            str(old_dir),
            "--recognizer",
            str(finetuned / "manifest.json"),
            "--out",
            str(new_dir),
            "--models-dir",
            str(models_dir),
        ]
    )
    assert code == 0
    settings = Settings(
        models_dir=models_dir,
        data_dir=new_dir,
        recognizer=str(finetuned / "manifest.json"),
        auth=True,
    )
    with TestClient(create_app(settings)) as client:  # the keys came along
        assert client.get("/ready").json()["gallery_faces"] == 1
        probe = photo(small_data, identity, "frontal", 2)
        response = client.post(
            "/identify", files={"image": (probe.name, probe.read_bytes())}, headers=key
        )
        assert response.status_code == 200, response.text
        (face,) = response.json()["faces"]
        assert face["match"] is not None
        assert face["match"]["subject"] == identity


def test_reembed_refuses_a_non_empty_target(
    finetuned: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "file").write_text("x")
    Gallery(tmp_path / "old", model_id="m@1", dim=512).close()
    code = main(
        [
            "reembed",
            "--data-dir",
            str(tmp_path / "old"),
            "--recognizer",
            str(finetuned / "manifest.json"),
            "--out",
            str(tmp_path / "new"),
            "--models-dir",
            str(models_dir),
        ]
    )
    assert code == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_reports_bad_input_without_a_traceback(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
):
    code = main(
        [
            "finetune",
            "--base",
            str(models_dir / BASE_MODEL),
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
            "--models-dir",
            str(models_dir),
        ]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


# --- configuration ------------------------------------------------------------------------


def test_config_defaults_are_the_recipe():
    config = load_config()
    assert config.train.freeze == "last:7"  # README, "Training": the measured CFP recipe
    assert config.head.kind == "arcface"
    assert config.head.margins() == (1.0, 0.5, 0.0)
    assert config.export.flip


def test_config_file_then_options_then_assignments(tmp_path: Path):
    toml = tmp_path / "recipe.toml"
    toml.write_text('[train]\nepochs = 9\nfreeze = "all"\n[head]\nkind = "cosface"\n')
    config = load_config(toml, {"train.epochs": 5}, ["optim.lr_head=0.02", "train.freeze=last:3"])
    assert config.train.epochs == 5
    assert config.train.freeze == "last:3"
    assert config.freeze_last() == 3
    assert config.optim.lr_head == 0.02
    assert config.head.margins() == (1.0, 0.0, 0.5)
    json_file = tmp_path / "recipe.json"
    json_file.write_text(config.model_dump_json())
    assert load_config(json_file) == config


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.freeze=some", "freeze"),
        ("train.epochs=0", "epochs"),
        ("train.unknown=1", "unknown"),
        ("epochs=3", "section.field=value"),
        ("augment.scale=0.2", "scale"),
    ],
)
def test_invalid_configuration_is_refused_with_the_field_named(assignment: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(None, None, [assignment])
