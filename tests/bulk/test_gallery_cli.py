"""``facerec gallery export / import-embeddings / import-photos`` on real files, real models
and real photos, run as ``python -m app.cli`` in a subprocess like a user would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.types import SearchHit
from app.gallery.embedded import EmbeddedGallery
from app.inference.catalog import resolve_manifest
from tests.serving import StartServer

REPO = Path(__file__).resolve().parents[2]
# Four CelebA identities, their first photos enrolled; the rest of theirs are probes.
IDENTITIES = ("7203", "7217", "7229", "7249")
ENROLLED_PER_IDENTITY = 4
MANIFEST, _ = resolve_manifest("w600k_mbf_int8", None)
MODEL_ID = MANIFEST.model_id
DIM = MANIFEST.embedding_dim or 0


def run_cli(
    data_dir: Path, models_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(FACEREC_DATA_DIR=str(data_dir), FACEREC_MODELS_DIR=str(models_dir))
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "gallery", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def failed_with(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The one error line of a failed run, checked to hold every fragment."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("facerec: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def open_gallery(data_dir: Path) -> EmbeddedGallery:
    return EmbeddedGallery(data_dir, model_id=MODEL_ID, dim=DIM)


@pytest.fixture(scope="module")
def photo_dir(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/<identity>/<photo>: a few real CelebA photos each, an image without a face,
    a folder whose name is not a valid subject, and a file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for identity in IDENTITIES:
        source = data_root / "celeba" / "images" / identity
        (root / identity).mkdir()
        for photo in sorted(source.iterdir())[:ENROLLED_PER_IDENTITY]:
            shutil.copy(photo, root / identity / photo.name)
    Image.new("RGB", (320, 240), (128, 128, 128)).save(root / IDENTITIES[0] / "blank.png")
    (root / IDENTITIES[0] / "notes.txt").write_text("not a photo")
    (root / "bad\x01name").mkdir()
    shutil.copy(
        sorted((data_root / "celeba" / "images" / "7253").iterdir())[0], root / "bad\x01name"
    )
    return root


@pytest.fixture(scope="module")
def enrolled(
    photo_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A gallery filled by import-photos, and what the command printed."""
    data_dir = tmp_path_factory.mktemp("gallery")
    output = succeeded(
        run_cli(data_dir, models_dir, "import-photos", "--collection", "people", str(photo_dir))
    )
    return data_dir, output


def test_import_photos_enrolls_each_identity_folder_with_the_enroll_gates(
    enrolled: tuple[Path, str],
) -> None:
    data_dir, output = enrolled
    faces = len(IDENTITIES) * ENROLLED_PER_IDENTITY
    assert f"{len(IDENTITIES)} subjects, {faces} faces added, 0 already enrolled" in output
    assert re.search(r"rejected\s+1\s+no_face", output)
    assert re.search(r"rejected\s+1\s+invalid_request", output)
    assert "blank.png" in output
    with open_gallery(data_dir) as gallery:
        subjects, total = gallery.list_subjects("people", limit=10, offset=0)
        assert total == len(IDENTITIES)
        assert {(s.subject, s.face_count) for s in subjects} == {
            (identity, ENROLLED_PER_IDENTITY) for identity in IDENTITIES
        }


def test_import_photos_again_adds_nothing(
    enrolled: tuple[Path, str], photo_dir: Path, models_dir: Path
) -> None:
    data_dir, _ = enrolled
    output = succeeded(
        run_cli(data_dir, models_dir, "import-photos", "--collection", "people", str(photo_dir))
    )
    faces = len(IDENTITIES) * ENROLLED_PER_IDENTITY
    assert f"0 faces added, {faces} already enrolled" in output


def test_import_photos_reads_nested_folders_and_splits_calls_by_the_pixel_budget(
    data_root: Path, models_dir: Path, tmp_path: Path
) -> None:
    """CFP's layout (DIR/<subject>/frontal|profile/<photo>) is read as is; photos that
    together exceed FACEREC_MAX_REQUEST_PIXELS go in several calls, one that alone does
    is rejected; a subject refused as a whole (a look-alike name) does not stop the rest."""
    root = tmp_path / "photos"
    cfp = data_root / "cfp" / "images" / "001"
    for pose, count in (("frontal", 3), ("profile", 2)):
        (root / "cfp001" / pose).mkdir(parents=True)
        for photo in sorted((cfp / pose).iterdir())[:count]:
            shutil.copy(photo, root / "cfp001" / pose / photo.name)
    (root / "cfp001" / ".trash").mkdir()
    shutil.copy(sorted((cfp / "frontal").iterdir())[5], root / "cfp001" / ".trash" / "x.jpg")
    celeba = data_root / "celeba" / "images"
    for folder, identity in (("ADA", "7203"), ("Ada", "7217")):
        (root / folder).mkdir()
        shutil.copy(sorted((celeba / identity).iterdir())[0], root / folder / "1.jpg")
    (root / "big").mkdir()
    Image.new("RGB", (1200, 1000), (128, 128, 128)).save(root / "big" / "huge.png")
    budget = 200_000  # below the five CFP photos' sum, above each of them
    data_dir = tmp_path / "gallery"

    output = succeeded(
        run_cli(
            data_dir,
            models_dir,
            "import-photos",
            "--collection",
            "people",
            "--face-policy",
            "largest",
            str(root),
            env={"FACEREC_MAX_REQUEST_PIXELS": str(budget)},
        )
    )

    assert "2 subjects, 6 faces added, 0 already enrolled, 2 photos rejected" in output
    assert re.search(r"rejected\s+1\s+name_conflict", output)
    assert re.search(r"rejected\s+1\s+request_too_large", output)
    assert "huge.png" in output
    with open_gallery(data_dir) as gallery:
        subjects, _ = gallery.list_subjects("people", limit=10, offset=0)
        assert {(s.subject, s.face_count) for s in subjects} == {("cfp001", 5), ("ADA", 1)}


def test_export_then_import_into_a_new_gallery_gives_identical_search_results(
    enrolled: tuple[Path, str], models_dir: Path, tmp_path: Path
) -> None:
    data_dir, _ = enrolled
    exported = tmp_path / "people.npz"
    succeeded(run_cli(data_dir, models_dir, "export", "--collection", "people", str(exported)))
    copy_dir = tmp_path / "copy"

    output = succeeded(
        run_cli(copy_dir, models_dir, "import-embeddings", "--collection", "p2", str(exported))
    )

    faces = len(IDENTITIES) * ENROLLED_PER_IDENTITY
    assert f"{faces} faces added, 0 already there" in output
    with np.load(exported) as archive:
        assert str(archive["model_id"]) == MODEL_ID
        assert archive["embeddings"].shape == (faces, DIM)
        assert archive["embeddings"].dtype == np.float32
        queries = archive["embeddings"]
    assert os.stat(exported).st_mode & 0o777 == 0o600
    with open_gallery(data_dir) as original:
        before = original.search("people", queries, top_k=3)
    with open_gallery(copy_dir) as copy:
        after = copy.search("p2", queries, top_k=3)

    def ranked(results: list[list[SearchHit]]) -> list[list[tuple[str, float]]]:
        return [[(hit.subject, round(hit.similarity, 6)) for hit in hits] for hits in results]

    assert ranked(after) == ranked(before)


def test_import_embeddings_again_adds_nothing(
    enrolled: tuple[Path, str], models_dir: Path, tmp_path: Path
) -> None:
    data_dir, _ = enrolled
    exported = tmp_path / "people.npz"
    succeeded(run_cli(data_dir, models_dir, "export", "--collection", "people", str(exported)))
    copy_dir = tmp_path / "copy"
    succeeded(
        run_cli(copy_dir, models_dir, "import-embeddings", "--collection", "c", str(exported))
    )

    output = succeeded(
        run_cli(copy_dir, models_dir, "import-embeddings", "--collection", "c", str(exported))
    )

    assert f"0 faces added, {len(IDENTITIES) * ENROLLED_PER_IDENTITY} already there" in output
    with open_gallery(copy_dir) as copy:
        assert copy.stats() == {"c": len(IDENTITIES) * ENROLLED_PER_IDENTITY}


def unit_rows(count: int, dim: int = DIM) -> np.ndarray:
    rows = np.random.default_rng(3).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (
            {"model_id": np.array("another-model"), "embeddings": unit_rows(3)},
            ("[gallery_model_mismatch]", "another-model", MODEL_ID),
        ),
        (
            {"model_id": np.array(MODEL_ID), "embeddings": unit_rows(3, dim=128)},
            ("[gallery_model_mismatch]", "dim 128"),
        ),
        (
            {"model_id": np.array(MODEL_ID), "embeddings": unit_rows(3) * 3},
            ("[invalid_request]", "row 0", "L2-normalised"),
        ),
        (
            {"model_id": np.array(MODEL_ID), "embeddings": unit_rows(3).astype(np.float64)},
            ("[invalid_request]", "float32"),
        ),
        ({"embeddings": unit_rows(3)}, ("[invalid_request]", "lacks model_id")),
    ],
    ids=["another model", "another dim", "not normalised", "float64", "no model id"],
)
def test_import_embeddings_refuses_a_file_it_cannot_trust_and_adds_nothing(
    content: dict[str, np.ndarray],
    fragments: tuple[str, ...],
    models_dir: Path,
    tmp_path: Path,
) -> None:
    source = tmp_path / "faces.npz"
    np.savez(source, subjects=np.array(["ada", "bob", "cy"]), **content)
    data_dir = tmp_path / "gallery"

    failed_with(
        run_cli(data_dir, models_dir, "import-embeddings", "--collection", "c", str(source)),
        *fragments,
    )

    with open_gallery(data_dir) as gallery:
        assert gallery.total_faces() == 0


def test_import_embeddings_checks_every_row_before_writing_any(
    models_dir: Path, tmp_path: Path
) -> None:
    rows = unit_rows(25)
    rows[23] *= 2
    source = tmp_path / "faces.npz"
    subjects = np.array([f"p{row}" for row in range(25)])
    np.savez(source, model_id=np.array(MODEL_ID), subjects=subjects, embeddings=rows)
    data_dir = tmp_path / "gallery"

    failed_with(
        run_cli(
            data_dir,
            models_dir,
            "import-embeddings",
            "--collection",
            "c",
            "--batch-size",
            "10",
            str(source),
        ),
        "row 23",
    )

    with open_gallery(data_dir) as gallery:
        assert gallery.total_faces() == 0


def test_a_file_that_is_not_an_embeddings_file_is_refused(models_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "faces.npz"
    source.write_bytes(b"PK\x03\x04 certainly not a zip")
    failed_with(
        run_cli(tmp_path / "g", models_dir, "import-embeddings", "--collection", "c", str(source)),
        "not a facerec embeddings file",
    )


@pytest.mark.parametrize("collection", ["", "a/b", "-x", "x" * 65])
def test_a_collection_the_http_api_cannot_address_is_refused(
    collection: str, models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.npz"
    failed_with(
        run_cli(tmp_path / "g", models_dir, "export", f"--collection={collection}", str(out)),
        "[invalid_request]",
        "collection",
    )


def test_exporting_an_empty_collection_is_an_error(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    failed_with(
        run_cli(tmp_path / "g", models_dir, "export", "--collection", "nobody", str(out)),
        "holds no faces",
    )
    assert not out.exists()


@pytest.mark.slow
def test_bulk_commands_refuse_while_the_server_runs(
    start_server: StartServer, models_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "served"
    server = start_server(data_dir, auth="false")

    line = failed_with(
        run_cli(data_dir, models_dir, "export", "--collection", "c", str(tmp_path / "o.npz")),
        "in use by another process",
        f"pid {server.pid}",
        "stop the server",
        "POST /enroll",
    )

    assert "[gallery_unavailable]" in line
    assert server.alive()
