"""The training loop on real CFP faces and the real imported backbone (CPU, seconds)."""

from __future__ import annotations

import copy
import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.dependencies import require

torch = require("torch", "the [train] extra")

from torch import fx, nn  # noqa: E402

from training.config import FinetuneConfig, load_config  # noqa: E402
from training.data import (  # noqa: E402  # noqa: E402
    build_cropper,
    limit_per_identity,
    load_faces,
    scan_identities,
)
from training.faces import FaceSet, split_identities  # noqa: E402
from training.heads import MarginHead  # noqa: E402
from training.optim import parameter_groups, trainable_groups, warmup_cosine  # noqa: E402
from training.prefix import split_before  # noqa: E402
from training.run_files import LAST_CHECKPOINT  # noqa: E402
from training.torch_embed import TorchEmbedder  # noqa: E402
from training.trainer import Trainer  # noqa: E402

BASE_MODEL = "w600k_mbf_int8.onnx"


class TinyBackbone:
    """An fx-traced toy network shaped like an imported backbone (groups input -> output)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        network = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=4),
            nn.PReLU(4),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 4, 3, stride=4),
            nn.PReLU(4),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 8),
            nn.BatchNorm1d(8),
        )
        self.module: fx.GraphModule = fx.symbolic_trace(network)
        self.embedding_dim = 8
        self._groups = (("0", "1", "2"), ("3", "4"), ("6", "7"))

    def layer_groups(self) -> list[nn.Module]:
        return [
            nn.ModuleDict({f"m{n}": self.module.get_submodule(n) for n in names})
            for names in self._groups
        ]


@pytest.fixture(scope="module")
def base_backbone(models_dir: Path):
    from training.backbone import load_backbone

    return load_backbone(models_dir / BASE_MODEL)


@pytest.fixture
def backbone(base_backbone):
    return copy.deepcopy(base_backbone)


@pytest.fixture(scope="module")
def cfp_faces(data_root: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(train, val): 6 + 3 CFP identities, 3 photos each (2 frontal, 1 profile)."""
    records = scan_identities(data_root / "cfp" / "images")
    chosen = {f"{i:03d}" for i in range(1, 10)}
    records = limit_per_identity([r for r in records if r.identity in chosen], 3)
    cropper = build_cropper("scrfd_500m", models_dir)
    cache = tmp_path_factory.mktemp("crops") / "cfp.npz"
    faces = load_faces(records, cropper, cache, progress=False).faces
    train_ids, val_ids = split_identities(faces.identities, 3, seed=0)
    return faces.of_identities(train_ids), faces.of_identities(val_ids)


def small_config(**overrides: object) -> FinetuneConfig:
    defaults: dict[str, object] = {
        "train.epochs": 3,
        "train.batch_size": 8,
        "train.feature_views": 2,
        "train.patience": 5,
        "train.threads": 2,
        "head.init": "random",
        "optim.lr_head": 0.05,
        "optim.lr_backbone": 1e-3,
    }
    return load_config(None, {**defaults, **overrides})


def fit(config: FinetuneConfig, backbone, faces: tuple[FaceSet, FaceSet], out: Path, **kw):
    trainer = Trainer(config, backbone, faces[0], faces[1], out, progress=False)
    return trainer, trainer.fit(**kw)


# --- pure pieces --------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    values = [warmup_cosine(step, 4, 20, 0.1) for step in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(values[4:]))
    assert values[-1] == pytest.approx(0.1, abs=0.01)
    assert warmup_cosine(0, 0, 10, 0.0) == 1.0


@pytest.mark.parametrize(("freeze_last", "trained"), [(None, 3), (0, 0), (1, 1), (2, 2)])
def test_freeze_policy_trains_only_the_chosen_groups(freeze_last, trained):
    tiny = TinyBackbone()
    trainable_groups(tiny, freeze_last)
    groups = tiny.layer_groups()
    flags = [all(p.requires_grad for p in g.parameters()) for g in groups]
    frozen = [not any(p.requires_grad for p in g.parameters()) for g in groups]
    assert flags == [False] * (3 - trained) + [True] * trained
    assert frozen == [True] * (3 - trained) + [False] * trained


def test_freezing_more_groups_than_exist_is_refused():
    with pytest.raises(ValueError, match="has 3 groups"):
        trainable_groups(TinyBackbone(), 4)


@pytest.mark.parametrize("freeze_last", [1, 2, 3])
def test_split_module_reproduces_the_network_and_shares_its_parameters(freeze_last):
    tiny = TinyBackbone()
    tiny.module.eval()
    groups = trainable_groups(tiny, freeze_last)
    split = split_before(tiny.module, groups[0])
    assert split is not None
    images = torch.randn(2, 3, 100, 100)
    with torch.no_grad():
        torch.testing.assert_close(split.suffix(split.prefix(images)), tiny.module(images))
    module_parameters = {id(p) for p in tiny.module.parameters()}
    assert {id(p) for p in split.suffix.parameters()} <= module_parameters
    assert {id(p) for p in groups[0].parameters()} <= {id(p) for p in split.suffix.parameters()}


def test_real_backbone_splits_exactly(backbone):
    groups = trainable_groups(backbone, 3)
    split = split_before(backbone.module, groups[0])
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(split.suffix(split.prefix(images)), backbone.module(images))


def test_backbone_and_head_get_their_own_learning_rates_and_biases_no_decay():
    tiny = TinyBackbone()
    trainable_groups(tiny, 1)
    config = small_config().optim
    groups = parameter_groups(tiny.module, MarginHead(8, 3), config)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == config.lr_head
    assert by_name["backbone"]["lr"] == by_name["backbone_no_decay"]["lr"] == config.lr_backbone
    assert [p.ndim for p in by_name["backbone"]["params"]] == [2]  # the Linear weight
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0
    assert len(by_name["backbone_no_decay"]["params"]) == 3  # Linear bias, BN weight, BN bias


def test_flip_sum_embeddings_are_unit_norm_and_mirror_invariant(backbone, cfp_faces):
    embedder = TorchEmbedder(backbone.module, 512, device=torch.device("cpu"), flip=True)
    crops = cfp_faces[1].crops[:3]
    embeddings = embedder.embed(crops)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(crops[:, :, ::-1].copy()), embeddings, atol=1e-5)


# --- training -----------------------------------------------------------------------------


def test_short_finetune_lowers_the_loss_and_logs_every_epoch(backbone, cfp_faces, tmp_path):
    _, result = fit(small_config(), backbone, cfp_faces, tmp_path)
    losses = [row["train_loss"] for row in result.history[1:]]
    assert len(losses) == 3
    assert losses[-1] < losses[0] * 0.8, losses
    assert result.feature_cache
    assert result.metric_name == "frontal_profile_tar@1e-3"
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_accuracy,lr_backbone,lr_head,val_metric")
    assert len(lines) == 1 + 4  # header, epoch 0 (the base model), 3 epochs


def test_resumed_run_takes_the_same_steps_as_an_uninterrupted_one(
    base_backbone, cfp_faces, tmp_path, monkeypatch
):
    config = small_config(**{"train.epochs": 2})
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    after_epoch_one = resumed_dir / "checkpoints" / LAST_CHECKPOINT
    record = Trainer._record_epoch

    def keep_epoch_one(self, epoch, *args, **kwargs):
        name = record(self, epoch, *args, **kwargs)
        if epoch == 1:  # what an interrupted run would have left behind
            after_epoch_one.parent.mkdir(parents=True)
            shutil.copy(straight_dir / "checkpoints" / LAST_CHECKPOINT, after_epoch_one)
        return name

    monkeypatch.setattr(Trainer, "_record_epoch", keep_epoch_one)
    fit(config, copy.deepcopy(base_backbone), cfp_faces, straight_dir)
    monkeypatch.undo()
    assert torch.load(after_epoch_one, weights_only=False)["epoch"] == 1

    _, result = fit(
        config, copy.deepcopy(base_backbone), cfp_faces, resumed_dir, resume_from=after_epoch_one
    )
    assert result.epochs_run == 2
    expected = torch.load(straight_dir / "checkpoints" / LAST_CHECKPOINT, weights_only=False)
    got = torch.load(resumed_dir / "checkpoints" / LAST_CHECKPOINT, weights_only=False)
    for key, value in expected["backbone"].items():
        torch.testing.assert_close(got["backbone"][key], value, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["head"]["weight"], expected["head"]["weight"], atol=1e-6, rtol=0)
    assert got["state"]["history"][-1]["train_loss"] == pytest.approx(
        expected["state"]["history"][-1]["train_loss"], rel=1e-5
    )


def test_training_stops_early_when_validation_stalls(backbone, cfp_faces, tmp_path):
    # Head only: the backbone, hence the validation metric, never changes.
    config = small_config(**{"train.freeze": "head", "train.epochs": 5, "train.patience": 1})
    _, result = fit(config, backbone, cfp_faces, tmp_path)
    assert result.stopped_early
    assert result.epochs_run == 1
    assert result.best_epoch == 0


def test_training_on_images_updates_only_trainable_groups_and_keeps_bn_statistics(
    backbone, cfp_faces, tmp_path
):
    config = small_config(
        **{
            "train.cache_features": False,
            "train.freeze": "last:1",
            "train.epochs": 1,
            "export.flip": False,
        }
    )
    before = copy.deepcopy(backbone.module.state_dict())
    _, result = fit(config, backbone, cfp_faces, tmp_path)
    assert not result.feature_cache
    assert math.isfinite(result.history[-1]["train_loss"])
    # The trained weights live in checkpoints (the module holds the best epoch's).
    trained = torch.load(tmp_path / "checkpoints" / LAST_CHECKPOINT, weights_only=False)
    last_group = set(backbone.layer_groups()[-1])
    for key, value in trained["backbone"].items():
        if key.split(".")[0] in last_group and "running" not in key and "num_batches" not in key:
            assert not torch.equal(value, before[key]), f"{key} should have trained"
        else:
            torch.testing.assert_close(value, before[key])  # frozen, BN statistics included
