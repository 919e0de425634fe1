"""Training data: identity folders, the service's crops (cached), splits, augmentation."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.dependencies import require

torch = require("torch", "the [train] extra")

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from training.config import AugmentConfig  # noqa: E402
from training.data import (  # noqa: E402
    ImageRecord,
    augment_face,
    build_cropper,
    cache_file,
    limit_per_identity,
    load_faces,
    scan_identities,
)
from training.datasets import FaceDataset  # noqa: E402
from training.faces import pose_of, split_identities  # noqa: E402
from training.tensors import faces_to_tensor  # noqa: E402

NO_AUGMENT = AugmentConfig(flip=0, brightness=0, contrast=0, saturation=0, blur=0, scale=0)


@pytest.fixture(scope="module")
def cropper(models_dir: Path):
    return build_cropper("scrfd_500m", models_dir)


@pytest.fixture
def small_cfp(data_root: Path, tmp_path: Path) -> Path:
    """Two CFP identities, two frontal and one profile photo each, plus a faceless image."""
    root = tmp_path / "faces"
    for identity in ("001", "002"):
        for pose, numbers in (("frontal", ("01", "02")), ("profile", ("01",))):
            target = root / identity / pose
            target.mkdir(parents=True)
            for number in numbers:
                source = data_root / "cfp" / "images" / identity / pose / f"{number}.jpg"
                shutil.copy(source, target / f"{number}.jpg")
    Image.new("RGB", (320, 240), (128, 128, 128)).save(root / "002" / "frontal" / "grey.png")
    return root


def write_files(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_scan_takes_images_anywhere_below_each_identity_folder(tmp_path: Path):
    write_files(
        tmp_path,
        ["a/1.jpg", "a/deep/er/2.PNG", "b/x.webp", "b/notes.txt", "top.jpg", "c/readme.md"],
    )
    records = scan_identities(tmp_path)
    assert [(r.identity, r.relpath) for r in records] == [
        ("a", "a/1.jpg"),
        ("a", "a/deep/er/2.PNG"),
        ("b", "b/x.webp"),
    ]


def test_scan_refuses_a_folder_without_identity_images(tmp_path: Path):
    write_files(tmp_path, ["top.jpg"])
    with pytest.raises(FileNotFoundError, match="no images"):
        scan_identities(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_identities(tmp_path / "missing")


def test_limit_per_identity_takes_every_folder_in_turn(tmp_path: Path):
    names = [f"p/frontal/{i:02d}.jpg" for i in range(1, 6)] + ["p/profile/01.jpg"]
    records = [ImageRecord(tmp_path / n, n, "p") for n in names]
    kept = [r.relpath for r in limit_per_identity(records, 3)]
    assert kept == ["p/frontal/01.jpg", "p/frontal/02.jpg", "p/profile/01.jpg"]
    assert limit_per_identity(records, None) == records


def test_pose_comes_from_the_cfp_folder_names():
    assert pose_of("001/frontal/01.jpg") == "frontal"
    assert pose_of("001/profile/01.jpg") == "profile"
    assert pose_of("George/George_0001.jpg") is None


def test_split_is_by_identity_disjoint_and_reproducible():
    names = [f"id{i:03d}" for i in range(50)] * 3  # repeated: one entry per image
    train, val = split_identities(names, 0.3, seed=7)
    assert len(val) == 15
    assert len(train) == 35
    assert not set(train) & set(val)
    assert (train, val) == split_identities(list(reversed(names)), 0.3, seed=7)
    assert split_identities(names, 0.3, seed=8) != (train, val)
    assert len(split_identities(names, 10, seed=7)[1]) == 10


@pytest.mark.parametrize("val", [1, 0.01, 50, 0.999])
def test_split_needs_two_validation_and_one_training_identity(val: float):
    with pytest.raises(ValueError, match="cannot hold out"):
        split_identities([f"id{i}" for i in range(50)], val, seed=0)


def test_crops_are_the_service_crops_of_the_largest_face(
    small_cfp: Path, cropper, models_dir: Path, tmp_path: Path
):
    """The gallery keeps the aligned crop of each enrolled face: training sees the same."""
    loaded = load_faces(scan_identities(small_cfp), cropper, tmp_path / "c.npz", progress=False)
    photo = small_cfp / "001" / "frontal" / "01.jpg"
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "gallery", auth=False)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/enroll",
            data={"subject": "001", "face_policy": "largest"},
            files=[("images", (photo.name, photo.read_bytes()))],
        )
        assert response.status_code == 201, response.text
        gallery = client.app.state.runtime.service.gallery  # type: ignore[attr-defined]
        (_, png), *_ = list(gallery.aligned_crops())
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    index = loaded.faces.relpaths.index("001/frontal/01.jpg")
    np.testing.assert_array_equal(loaded.faces.crops[index], served)


def test_faces_are_cached_and_photos_without_a_face_reported(
    small_cfp: Path, cropper, tmp_path: Path
):
    records = scan_identities(small_cfp)
    cache = tmp_path / "cache" / "crops.npz"
    first = load_faces(records, cropper, cache, progress=False)
    assert first.detected == len(records) == 7
    assert [r.relpath for r in first.without_face] == ["002/frontal/grey.png"]
    assert len(first.faces) == 6
    assert first.faces.crops.shape == (6, 112, 112, 3)
    assert first.faces.poses().count("profile") == 2
    second = load_faces(records, cropper, cache, progress=False)
    assert second.detected == 0
    np.testing.assert_array_equal(second.faces.crops, first.faces.crops)
    assert second.faces.relpaths == first.faces.relpaths


def test_cache_file_is_per_detector_and_folder(tmp_path: Path):
    first = cache_file(tmp_path, "scrfd_500m@5e4447f5", Path("/data/cfp/images"))
    assert first.parent.name == "scrfd_500m_5e4447f5"
    assert first != cache_file(tmp_path, "scrfd_500m@5e4447f5", Path("/data/lfw/images"))
    assert first != cache_file(tmp_path, "scrfd_2.5g@041f73f4", Path("/data/cfp/images"))


def test_unreadable_photos_are_reported_not_fatal(tmp_path: Path, cropper):
    write_files(tmp_path / "faces", ["a/broken.jpg"])
    loaded = load_faces(
        scan_identities(tmp_path / "faces"), cropper, tmp_path / "c.npz", progress=False
    )
    assert [r.relpath for r, _ in loaded.unreadable] == ["a/broken.jpg"]
    assert len(loaded.faces) == 0


def gradient_face() -> np.ndarray:
    ys, xs = np.mgrid[:112, :112]
    return np.stack([xs * 2, ys * 2, (xs + ys)], axis=-1).astype(np.uint8)


def test_augmentation_is_deterministic_per_rng_and_keeps_the_format():
    face = gradient_face()
    config = AugmentConfig()
    first = augment_face(face, np.random.default_rng(3), config)
    assert first.shape == face.shape
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, augment_face(face, np.random.default_rng(3), config))
    assert not np.array_equal(first, augment_face(face, np.random.default_rng(4), config))


def test_flip_only_mirrors_and_no_augmentation_is_identity():
    face = gradient_face()
    mirrored = augment_face(
        face, np.random.default_rng(0), NO_AUGMENT.model_copy(update={"flip": 1})
    )
    np.testing.assert_array_equal(mirrored, face[:, ::-1])
    np.testing.assert_array_equal(augment_face(face, np.random.default_rng(0), NO_AUGMENT), face)


def test_scale_jitter_keeps_the_centre_in_place():
    face = np.zeros((112, 112, 3), np.uint8)
    face[54:58, 54:58] = 255  # a bright square at the centre
    config = NO_AUGMENT.model_copy(update={"scale": 0.05})
    for seed in range(5):
        zoomed = augment_face(face, np.random.default_rng(seed), config)
        assert zoomed[55:57, 55:57].min() > 200


def test_dataset_items_depend_on_seed_epoch_and_index_only():
    crops = np.stack([gradient_face(), gradient_face()[::-1]])
    dataset = FaceDataset(crops, np.array([0, 1]), AugmentConfig(), seed=1)
    image, label = dataset[1]
    assert image.shape == (3, 112, 112)
    assert label == 1
    torch.testing.assert_close(dataset[1][0], image)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][0], image)


def test_faces_to_tensor_normalises_like_the_service():
    faces = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    tensor = faces_to_tensor(faces)
    assert tensor.shape == (1, 3, 1, 1)
    torch.testing.assert_close(tensor.flatten(), torch.tensor([-1.0, -0.5 / 127.5, 1.0]))
