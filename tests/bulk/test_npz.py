"""The embeddings file: streamed both ways, numpy-compatible, untrusted on the way in."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.bulk.npz import EmbeddingFileReader, EmbeddingFileWriter
from app.errors import InvalidRequest


def unit_rows(count: int, dim: int) -> np.ndarray:
    rows = np.random.default_rng(5).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_written_file_is_a_plain_npz_and_reads_back_in_batches(tmp_path: Path) -> None:
    rows = unit_rows(23, 8)
    subjects = [f"person {row // 3} ✓" for row in range(23)]
    path = tmp_path / "faces.npz"
    with EmbeddingFileWriter(path, model_id="model-x", dim=8) as writer:
        for start in range(0, 23, 5):
            chunk = slice(start, start + 5)
            writer.write(subjects[chunk], [f"id{i}" for i in range(23)][chunk], rows[chunk])
        writer.commit()

    with np.load(path, allow_pickle=False) as archive:
        assert str(archive["model_id"]) == "model-x"
        assert archive["subjects"].tolist() == subjects
        assert archive["face_ids"].tolist() == [f"id{i}" for i in range(23)]
        np.testing.assert_array_equal(archive["embeddings"], rows)
    with EmbeddingFileReader(path) as reader:
        assert (reader.summary.model_id, reader.summary.count, reader.summary.dim) == (
            "model-x",
            23,
            8,
        )
        batches = list(reader.batches(7))
    assert [len(names) for names, _ in batches] == [7, 7, 7, 2]
    assert [name for names, _ in batches for name in names] == subjects
    np.testing.assert_array_equal(np.concatenate([vectors for _, vectors in batches]), rows)


def test_nothing_is_left_behind_when_a_write_is_abandoned(tmp_path: Path) -> None:
    path = tmp_path / "faces.npz"
    with EmbeddingFileWriter(path, model_id="m", dim=4) as writer:
        writer.write(["a"], ["f"], unit_rows(1, 4))
    assert list(tmp_path.iterdir()) == []


def test_numpy_savez_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "faces.npz"
    rows = unit_rows(4, 16)
    np.savez_compressed(path, model_id="m", subjects=np.array(list("abcd")), embeddings=rows)
    with EmbeddingFileReader(path) as reader:
        ((names, vectors),) = list(reader.batches(100))
    assert names == list("abcd")
    np.testing.assert_array_equal(vectors, rows)


def write_raw(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"subjects": np.array(["a"]), "embeddings": unit_rows(1, 4)}, "lacks model_id"),
        (
            {
                "model_id": np.array("m"),
                "subjects": np.array(["a", "b"]),
                "embeddings": unit_rows(1, 4),
            },
            "2 subjects but 1 embeddings",
        ),
        (
            {"model_id": np.array("m"), "subjects": np.array([1]), "embeddings": unit_rows(1, 4)},
            "subjects must be strings",
        ),
        (
            {
                "model_id": np.array("m"),
                "subjects": np.array(["a"]),
                "embeddings": unit_rows(1, 4)[0],
            },
            "2-d array",
        ),
        (
            {"model_id": np.array(3), "subjects": np.array(["a"]), "embeddings": unit_rows(1, 4)},
            "short string",
        ),
    ],
)
def test_malformed_files_are_refused(
    arrays: dict[str, np.ndarray], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "faces.npz"
    write_raw(path, **arrays)
    with pytest.raises(InvalidRequest, match=message):
        EmbeddingFileReader(path)


def test_pickled_objects_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "faces.npz"
    objects = np.array([{"__reduce__": "boom"}], dtype=object)
    np.savez(path, model_id=np.array("m"), subjects=objects, embeddings=unit_rows(1, 4))
    with pytest.raises(InvalidRequest, match="Python objects"):
        EmbeddingFileReader(path)


def test_a_file_cut_short_is_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "faces.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in (("model_id", np.array("m")), ("subjects", np.array(["a", "b"]))):
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, array)
        with archive.open("embeddings.npy", "w") as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (2, 4)}
            np.lib.format.write_array_header_1_0(member, header)
            member.write(unit_rows(1, 4).tobytes())  # one row of two
    with EmbeddingFileReader(path) as reader, pytest.raises(InvalidRequest, match="ends early"):
        list(reader.batches(10))
