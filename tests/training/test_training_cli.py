"""``python -m training``: a tiny real fine-tune, its outputs, and the service using them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from tests.dependencies import require

torch = require("torch", "the [train] extra")

from app.config import Settings  # noqa: E402
from app.errors import GalleryModelMismatch  # noqa: E402
from app.gallery.embedded import EmbeddedGallery as Gallery  # noqa: E402
from app.inference.catalog import resolve_manifest  # noqa: E402
from app.inference.loader import build_embedder, load_model  # noqa: E402
from app.inference.manifest import file_sha256, load_manifest  # noqa: E402
from app.inference.onnx_import import import_model  # noqa: E402
from app.inference.session import RuntimeOptions  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.training.faces import aligned_faces, service_detector  # noqa: E402
from training.cli import main  # noqa: E402
from training.config import ConfigError, load_config  # noqa: E402
from training.evaluation import cfp_protocol  # noqa: E402
from training.run_files import CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_CSV  # noqa: E402
from training.trainer import Trainer  # noqa: E402

BASE_MODEL = "w600k_mbf_int8.onnx"
BASE_MANIFEST = "w600k_mbf_int8"  # --base takes the recognizer's manifest
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


def finetune_args(
    models_dir: Path, data: Path, out: Path, common_args: list[str], *extra: str
) -> list[str]:
    """The tiny recipe of these tests: 4 validation identities, 2 epochs, batches of 8."""
    return [
        "finetune",
        "--base",
        BASE_MANIFEST,
        "--data",
        str(data),
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
        *extra,
    ]


@pytest.fixture(scope="module")
def interrupted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the ``finetuned`` run had written when its epoch 1 ended: as if killed then."""
    return tmp_path_factory.mktemp("interrupted")


@pytest.fixture(scope="module")
def finetuned(
    small_data: Path,
    models_dir: Path,
    common_args: list[str],
    interrupted_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("run")
    record = Trainer._record_epoch

    def keep_epoch_one(self: Trainer, epoch: int, *args: Any, **kwargs: Any) -> str:
        name = record(self, epoch, *args, **kwargs)
        if epoch == 1:
            shutil.copytree(out / CHECKPOINT_DIR, interrupted_dir / CHECKPOINT_DIR)
            shutil.copy(out / METRICS_CSV, interrupted_dir / METRICS_CSV)
        return name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_record_epoch", keep_epoch_one)
        code = main(finetune_args(models_dir, small_data, out, common_args))
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


def metrics_rows(run: Path) -> list[dict[str, float]]:
    """metrics.csv without its timing column."""
    with (run / METRICS_CSV).open(newline="") as handle:
        return [
            {k: float(v) for k, v in row.items() if k != "seconds"}
            for row in csv.DictReader(handle)
        ]


def test_resume_continues_an_interrupted_finetune_to_the_same_model(
    finetuned: Path,
    interrupted_dir: Path,
    small_data: Path,
    models_dir: Path,
    common_args: list[str],
):
    """`finetune --resume last` in the folder of a run stopped after epoch 1 ends where the
    run that was never stopped ended: same weights, same metrics, same threshold."""
    left_behind = torch.load(interrupted_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=False)
    assert left_behind["epoch"] == 1

    code = main(
        finetune_args(models_dir, small_data, interrupted_dir, common_args, "--resume", "last")
    )

    assert code == 0
    straight = torch.load(finetuned / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=False)
    resumed = torch.load(interrupted_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=False)
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, value in straight["backbone"].items():
        torch.testing.assert_close(resumed["backbone"][key], value, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        resumed["head"]["weight"], straight["head"]["weight"], atol=1e-6, rtol=0
    )
    straight_rows, resumed_rows = metrics_rows(finetuned), metrics_rows(interrupted_dir)
    assert [row["epoch"] for row in resumed_rows] == [0, 1, 2]
    for got, expected in zip(resumed_rows, straight_rows, strict=True):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7, nan_ok=True)
    got_manifest = load_manifest(interrupted_dir / "manifest.json")
    expected_manifest = load_manifest(finetuned / "manifest.json")
    assert got_manifest.thresholds is not None
    assert expected_manifest.thresholds is not None
    assert got_manifest.thresholds.match == pytest.approx(
        expected_manifest.thresholds.match, abs=1e-5
    )


@pytest.mark.parametrize("head", ["cosface", "combined"])
def test_cosface_and_combined_heads_finetune_end_to_end(
    head: str,
    small_data: Path,
    models_dir: Path,
    common_args: list[str],
    tmp_path: Path,
):
    out = tmp_path / head
    code = main(
        finetune_args(
            models_dir,
            small_data,
            out,
            common_args,
            "--head",
            head,
            "--epochs",
            "1",
            "--set",
            "head.margin=0.35",
        )
    )

    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["head"]["kind"] == head
    rows = metrics_rows(out)
    assert [row["epoch"] for row in rows] == [0, 1]
    assert 0 < rows[1]["train_loss"] < 100  # finite: the margin head trained
    assert 0 <= rows[1]["frontal_profile_tar@1e-3"] <= 1
    manifest = load_manifest(out / "manifest.json")
    assert manifest.training is not None
    assert manifest.training["config"]["head"]["kind"] == head  # type: ignore[index]
    settings = Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "gallery",
        recognizer=str(out / "manifest.json"),
        auth=False,
    )
    probe = photo(small_data, IDENTITIES[0], "frontal", 1)
    with TestClient(create_app(settings)) as client:
        response = client.post("/embed", files={"image": (probe.name, probe.read_bytes())})
    assert response.status_code == 200, response.text
    (face,) = response.json()["faces"]
    assert len(face["embedding"]) == 512
    assert sum(v * v for v in face["embedding"]) == pytest.approx(1.0, abs=1e-4)


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
            # Two manifests of one name (every run is "finetuned" by default) keep both.
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
    again = f"finetuned ({finetuned / 'manifest.json'})"
    assert set(models) == {"w600k_mbf_int8", "finetuned", again}
    assert models[again] == models["finetuned"]
    assert again in (tmp_path / "report.txt").read_text()
    for summary in models.values():
        assert summary["verification"]["frontal_profile"]["genuine_pairs"] == 4 * 3 * 2
    assert (tmp_path / "roc_frontal_profile.png").is_file()


# Gaussian noise added to every float weight of the dequantized base, relative to the
# weight tensor's own standard deviation: a model known to be worse than the base.
WEIGHT_NOISE = 0.5


@pytest.fixture(scope="module")
def worse_manifest(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base recognizer with noisy weights, as its own ONNX file and manifest."""
    folder = tmp_path_factory.mktemp("worse")
    imported = import_model(
        (models_dir / BASE_MODEL).read_bytes(), dequantize=True, fix_dynamic_shapes=True
    )
    model = onnx.load_model_from_string(imported)
    weights = {node.input[1] for node in model.graph.node if node.op_type in {"Conv", "MatMul"}}
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.name in weights:
            value = numpy_helper.to_array(init)
            noisy = value + rng.normal(0, WEIGHT_NOISE * value.std(), value.shape)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    onnx.save(model, folder / "worse.onnx")
    base, _ = resolve_manifest("w600k_mbf_int8")
    manifest = base.model_copy(
        update={
            "name": "worse",
            "file": str(folder / "worse.onnx"),
            "sha256": file_sha256(folder / "worse.onnx"),
            "import_steps": base.import_steps.model_copy(update={"dequantize": False}),
        }
    )
    path = folder / "worse.json"
    path.write_text(manifest.model_dump_json(), encoding="utf-8")
    return path


def test_evaluate_ranks_a_known_worse_model_below_the_base_with_the_right_figures(
    finetuned: Path,
    worse_manifest: Path,
    small_data: Path,
    models_dir: Path,
    common_args: list[str],
    tmp_path: Path,
):
    """Two different models get different figures, in the right order, and the base's are
    what its embeddings give when scored directly with the protocol."""
    code = main(
        [
            "evaluate",
            "--recognizer",
            "w600k_mbf_int8",
            "--recognizer",
            str(worse_manifest),
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
    base = models["w600k_mbf_int8"]["verification"]["frontal_profile"]
    worse = models["worse"]["verification"]["frontal_profile"]
    print(f"\nbase {base}\nworse {worse}")
    assert base["auc"] > worse["auc"] + 0.05
    assert base["tar_at_far"]["1e-2"] > worse["tar_at_far"]["1e-2"] + 0.2

    # The base's figures from its own embeddings of the validation photos (the service's
    # detector, largest face, its embedder with flip-sum), scored directly.
    val = json.loads((finetuned / "split.json").read_text())["val"]
    detector = service_detector(models_dir)
    embedder = build_embedder(
        load_model(
            "w600k_mbf_int8",
            "recognizer",
            models_dir=models_dir,
            catalog_dir=None,
            options=RuntimeOptions(),
        )
    )
    crops, identities, poses = [], [], []
    for identity in sorted(val):
        for pose in ("frontal", "profile"):
            for path in sorted((small_data / identity / pose).iterdir()):
                (crop,) = aligned_faces(detector, path, 1)
                crops.append(crop)
                identities.append(identity)
                poses.append(pose)
    direct = cfp_protocol(embedder.embed(np.stack(crops)), identities, poses).summary()
    direct_fp = direct["verification"]["frontal_profile"]
    assert base["genuine_pairs"] == direct_fp["genuine_pairs"] == 4 * 3 * 2
    assert base["tar_at_far"] == pytest.approx(direct_fp["tar_at_far"], abs=1e-6)
    assert base["auc"] == pytest.approx(direct_fp["auc"], abs=1e-4)
    assert models["w600k_mbf_int8"]["rank1"] == pytest.approx(direct["rank1"], abs=1e-6)


def test_export_rebuilds_a_manifest_from_a_checkpoint(
    finetuned: Path, small_data: Path, models_dir: Path, common_args: list[str], tmp_path: Path
):
    code = main(
        [
            "export",
            "--base",
            BASE_MANIFEST,
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
        listing = client.get("/subjects", headers=key).json()
        assert [(s["subject"], s["face_count"]) for s in listing["items"]] == [(identity, 1)]
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
            BASE_MANIFEST,
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


def test_cli_refuses_a_bare_onnx_base_and_asks_for_its_manifest(
    tmp_path: Path, models_dir: Path, small_data: Path, capsys: pytest.CaptureFixture[str]
):
    bare = str(models_dir / BASE_MODEL)
    folders = ["--data", str(small_data), "--models-dir", str(models_dir)]
    code = main(["finetune", "--base", bare, *folders, "--out", str(tmp_path / "out")])
    assert code == 2
    assert "pass the recognizer's manifest" in capsys.readouterr().err
    assert not (tmp_path / "out" / "split.json").exists()


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
