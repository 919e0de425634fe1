"""The ``facerec`` command, run as ``python -m app.cli`` in a subprocess."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.inference.catalog import default_catalog_dir, list_manifests

REPO = Path(__file__).resolve().parent.parent
DETECTOR_BYTES = b"tiny detector " * 100
SHIPPED_NAMES = list(list_manifests())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"FACEREC_MODELS_URL_BASE", "FACEREC_CATALOG_DIR"}
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("facerec: error: ")
    assert fragment in lines[0]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1; yields it and its base URL."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output clean."""

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def catalog(tmp_path: Path, served: tuple[Path, str]) -> Path:
    """A catalog with pack ``tiny`` (tiny.zip on the server) and manifest ``tiny_det``."""
    root, base_url = served
    with zipfile.ZipFile(root / "tiny.zip", "w") as archive:
        archive.writestr("det.onnx", DETECTOR_BYTES)
        archive.writestr("unused.onnx", b"not installed")
    catalog_dir = tmp_path / "catalog"
    (catalog_dir / "packs").mkdir(parents=True)
    (catalog_dir / "manifests").mkdir()
    pack = {
        "name": "tiny",
        "url": f"{base_url}/tiny.zip",
        "archive_sha256": sha256((root / "tiny.zip").read_bytes()),
        "target_dir": "tiny",
        "members": [{"name": "det.onnx", "sha256": sha256(DETECTOR_BYTES), "manifest": "tiny_det"}],
        "licence": "test data, no rights",
    }
    (catalog_dir / "packs" / "tiny.json").write_text(json.dumps(pack))
    manifest = json.loads((default_catalog_dir() / "manifests" / "scrfd_500m.json").read_text())
    manifest.update(
        name="tiny_det",
        file="tiny/det.onnx",
        sha256=sha256(DETECTOR_BYTES),
        source={"pack": "tiny", "url": pack["url"]},
    )
    (catalog_dir / "manifests" / "tiny_det.json").write_text(json.dumps(manifest))
    return catalog_dir


def test_models_list_shows_every_catalog_model_and_that_its_file_is_missing(
    tmp_path: Path,
) -> None:
    result = run_cli("models", "list", env={"FACEREC_MODELS_DIR": str(tmp_path / "empty")})

    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for name in SHIPPED_NAMES:
        assert rows[name][2] == "missing"
    assert rows["buffalo_l_w600k_r50"][1] == "recognizer"
    assert "buffalo_l/w600k_r50.onnx  (facerec models fetch buffalo_l)" in result.stdout
    assert "packs: buffalo_l, buffalo_s" in result.stdout


def test_models_list_marks_the_shared_files_verified(models_dir: Path) -> None:
    result = run_cli("models", "list", env={"FACEREC_MODELS_DIR": str(models_dir)})

    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["scrfd_500m"][2] == "ok"
    assert rows["w600k_mbf_int8"][2] == "ok"


def test_models_fetch_installs_a_pack_from_a_pack_file_then_is_a_no_op(
    tmp_path: Path, catalog: Path
) -> None:
    models_dir = tmp_path / "models"
    pack_file = str(catalog / "packs" / "tiny.json")

    first = run_cli("models", "fetch", pack_file, "--dir", str(models_dir))
    second = run_cli("models", "fetch", pack_file, "--dir", str(models_dir))

    assert first.returncode == 0, first.stderr
    assert "tiny: installed from http://127.0.0.1:" in first.stdout
    assert f"sha256 {sha256(DETECTOR_BYTES)}" in first.stdout
    assert "licence: test data, no rights" in first.stdout
    assert (models_dir / "tiny" / "det.onnx").read_bytes() == DETECTOR_BYTES
    assert not (models_dir / "tiny" / "unused.onnx").exists()
    assert second.returncode == 0, second.stderr
    assert "tiny: already installed and verified" in second.stdout


def test_models_fetch_by_model_name_installs_its_pack(tmp_path: Path, catalog: Path) -> None:
    models_dir = tmp_path / "models"

    result = run_cli(
        "models", "fetch", "tiny_det", "--catalog", str(catalog), "--dir", str(models_dir)
    )

    assert result.returncode == 0, result.stderr
    assert (models_dir / "tiny" / "det.onnx").is_file()


def test_models_fetch_url_option_replaces_the_pack_url(
    tmp_path: Path, catalog: Path, served: tuple[Path, str]
) -> None:
    pack_file = tmp_path / "elsewhere.json"
    pack = json.loads((catalog / "packs" / "tiny.json").read_text())
    pack["url"] = "https://example.invalid/tiny.zip"
    pack_file.write_text(json.dumps(pack))
    models_dir = tmp_path / "models"

    result = run_cli(
        "models",
        "fetch",
        str(pack_file),
        "--dir",
        str(models_dir),
        "--url",
        f"{served[1]}/tiny.zip",
    )

    assert result.returncode == 0, result.stderr
    assert (models_dir / "tiny" / "det.onnx").is_file()


def test_models_fetch_honours_the_mirror_url_base(
    tmp_path: Path, catalog: Path, served: tuple[Path, str]
) -> None:
    pack_file = tmp_path / "elsewhere.json"
    pack = json.loads((catalog / "packs" / "tiny.json").read_text())
    pack["url"] = "https://example.invalid/releases/tiny.zip"
    pack_file.write_text(json.dumps(pack))

    result = run_cli(
        "models",
        "fetch",
        str(pack_file),
        "--dir",
        str(tmp_path / "models"),
        env={"FACEREC_MODELS_URL_BASE": served[1]},
    )

    assert result.returncode == 0, result.stderr
    assert f"installed from {served[1]}/tiny.zip" in result.stdout


def test_models_fetch_404_exits_1_with_a_one_line_error(
    tmp_path: Path, catalog: Path, served: tuple[Path, str]
) -> None:
    models_dir = tmp_path / "models"

    result = run_cli(
        "models",
        "fetch",
        "tiny",
        "--catalog",
        str(catalog),
        "--dir",
        str(models_dir),
        "--url",
        f"{served[1]}/missing.zip",
    )

    assert_one_line_error(result, "HTTP 404")
    assert not any(path.is_file() for path in models_dir.rglob("*"))


def test_models_fetch_of_the_official_pack_refuses_a_file_that_is_not_the_release(
    tmp_path: Path, served: tuple[Path, str]
) -> None:
    (served[0] / "buffalo_s.zip").write_bytes(b"an impostor")

    result = run_cli(
        "models",
        "fetch",
        "buffalo_s",
        "--dir",
        str(tmp_path / "models"),
        env={"FACEREC_MODELS_URL_BASE": served[1]},
    )

    assert_one_line_error(
        result, "d85a87f503f691807cd8bb97128bdf7a0660326cd9cd02657127fa978bab8b5e"
    )


def test_models_fetch_unknown_name_lists_the_packs(tmp_path: Path) -> None:
    result = run_cli("models", "fetch", "antelopev2", "--dir", str(tmp_path))

    assert_one_line_error(result, "available: buffalo_l, buffalo_s")


def test_models_fetch_of_a_model_in_no_pack_says_so(tmp_path: Path) -> None:
    result = run_cli("models", "fetch", "w600k_mbf_int8", "--dir", str(tmp_path))

    assert_one_line_error(result, "comes in no downloadable pack")


def test_models_verify_reports_good_missing_and_corrupt_files(
    tmp_path: Path, catalog: Path
) -> None:
    models_dir = tmp_path / "models"
    where = ("--catalog", str(catalog), "--dir", str(models_dir))

    missing = run_cli("models", "verify", *where)
    assert run_cli("models", "fetch", "tiny", *where).returncode == 0
    good = run_cli("models", "verify", *where)
    (models_dir / "tiny" / "det.onnx").write_bytes(b"corrupted")
    corrupt = run_cli("models", "verify", *where)

    assert "missing   tiny_det  tiny/det.onnx" in missing.stdout
    assert_one_line_error(missing, "no model file to verify")
    assert good.returncode == 0, good.stderr
    assert f"ok        tiny_det  {models_dir / 'tiny' / 'det.onnx'}" in good.stdout
    assert f"sha256 {sha256(DETECTOR_BYTES)}" in good.stdout
    assert "1 verified, 0 missing, 0 failed" in good.stdout
    assert "MISMATCH  tiny_det" in corrupt.stdout
    assert_one_line_error(corrupt, "1 model file(s) do not match")


def test_models_verify_with_no_files_present_fails_and_says_how_to_get_some(
    tmp_path: Path,
) -> None:
    result = run_cli("models", "verify", env={"FACEREC_MODELS_DIR": str(tmp_path)})

    assert f"0 verified, {len(SHIPPED_NAMES)} missing, 0 failed" in result.stdout
    assert_one_line_error(result, "facerec models fetch buffalo_s")


def test_invalid_configuration_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli("models", "list", env={"FACEREC_INFERENCE_WORKERS": "-1"})

    assert_one_line_error(result, "invalid FACEREC_* configuration")


@pytest.mark.parametrize(
    "args",
    [(), ("models",), ("bogus",), ("models", "fetch"), ("serve", "--port", "eighty")],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)

    assert result.returncode == 2
    assert "usage: facerec" in result.stderr


def test_serve_with_missing_models_exits_1_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FACEREC_MODELS_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("FACEREC_DATA_DIR", str(tmp_path / "gallery"))

    status = cli.main(["serve", "--port", "9001"])

    error_lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(error_lines) == 1
    assert error_lines[0].startswith("facerec: error: [model_not_found]")


def test_models_fetch_of_a_full_pack_says_how_to_serve_it(
    tmp_path: Path, catalog: Path, served: tuple[Path, str]
) -> None:
    root, base_url = served
    recognizer_bytes = b"tiny recognizer " * 100
    with zipfile.ZipFile(root / "pair.zip", "w") as archive:
        archive.writestr("det.onnx", DETECTOR_BYTES)
        archive.writestr("rec.onnx", recognizer_bytes)
    recognizer = json.loads(
        (default_catalog_dir() / "manifests" / "w600k_mbf_int8.json").read_text()
    )
    recognizer.update(name="tiny_rec", file="pair/rec.onnx", sha256=sha256(recognizer_bytes))
    (catalog / "manifests" / "tiny_rec.json").write_text(json.dumps(recognizer))
    pack = {
        "name": "pair",
        "url": f"{base_url}/pair.zip",
        "archive_sha256": sha256((root / "pair.zip").read_bytes()),
        "target_dir": "pair",
        "members": [
            {"name": "det.onnx", "sha256": sha256(DETECTOR_BYTES), "manifest": "tiny_det"},
            {"name": "rec.onnx", "sha256": sha256(recognizer_bytes), "manifest": "tiny_rec"},
        ],
        "licence": "test data, no rights",
    }
    (catalog / "packs" / "pair.json").write_text(json.dumps(pack))
    models_dir = tmp_path / "models"

    result = run_cli("models", "fetch", "pair", "--catalog", str(catalog), "--dir", str(models_dir))

    assert result.returncode == 0, result.stderr
    assert (
        f"serve them: FACEREC_MODELS_DIR={models_dir} FACEREC_DETECTOR=tiny_det "
        "FACEREC_RECOGNIZER=tiny_rec facerec serve"
    ) in result.stdout
