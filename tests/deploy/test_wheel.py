"""What the images install: the project's wheel, built and installed as ``pip install .`` does.

The Dockerfiles' builders run ``pip install ".[cpu]"`` / ``".[gpu]"``, which builds this
wheel and installs it in a fresh virtual environment. Here the wheel is built from a copy
of the sources, installed without dependencies into a new venv (the dependencies come from
the project's venv through a path entry, so nothing is downloaded) and run from outside the
repository: the catalog, static files and the ``facerec`` command must all come from the
wheel, never from the source tree.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.inference.catalog import PACKAGED_CATALOG, list_manifests, list_packs

REPO = Path(__file__).resolve().parents[2]
# What the Dockerfiles COPY into the builder, so what the wheel is built from.
BUILD_SOURCES = ["pyproject.toml", "setup.py", "README.md", "app", "training", "models"]
SHARED_FILE_MANIFESTS = ["scrfd_500m", "scrfd_2.5g", "w600k_mbf_int8"]
HEALTHCHECK = (
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"
)
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(env)
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_SOURCES:
        origin = REPO / name
        if origin.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.onnx")
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    out = tmp_path_factory.mktemp("dist")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = run([*pip_wheel, "--no-index", "--quiet", "--wheel-dir", str(out), "."], source)
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("facerec-*.whl")
    return found


@pytest.fixture(scope="module")
def environment(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the wheel installed in it; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    target = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root
    )
    # The dependencies, from the project's venv: a plain path entry, so its .pth files
    # (the editable install pointing at this repository) are not processed.
    Path(target.stdout.strip(), "dependencies.pth").write_text(sysconfig.get_path("purelib"))
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    installed = run([*pip_install, "--no-deps", "--no-index", "--quiet", str(wheel)], root)
    assert installed.returncode == 0, installed.stderr
    return root / "bin"


def test_wheel_holds_every_package_file_and_the_model_catalog(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    package_files = {
        path.relative_to(REPO).as_posix()
        for package in ("app", "training")
        for path in (REPO / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    catalog = {
        f"app/{PACKAGED_CATALOG}/{path.relative_to(REPO / 'models').as_posix()}"
        for path in [*list_manifests().values(), *list_packs().values()]
    }

    assert package_files <= names, sorted(package_files - names)
    assert catalog <= names, sorted(catalog - names)
    assert f"app/{PACKAGED_CATALOG}/README.md" in names
    assert not {name for name in names if name.startswith(("tests/", "models/", "bench/"))}


def test_wheel_declares_the_facerec_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        text = archive.read(entry_points).decode()

    assert "facerec = app.cli:main" in text


def test_installed_wheel_uses_its_packaged_catalog(environment: Path, tmp_path: Path) -> None:
    probe = "import app.inference.catalog as c; print(c.default_catalog_dir())"
    result = run([str(environment / "python"), "-c", probe], tmp_path)

    assert result.returncode == 0, result.stderr
    catalog = Path(result.stdout.strip())
    assert catalog.name == PACKAGED_CATALOG
    assert catalog.is_relative_to(environment.parent)


def test_installed_facerec_lists_the_catalog_from_outside_the_repository(
    environment: Path, tmp_path: Path, models_dir: Path
) -> None:
    result = run(
        [str(environment / "facerec"), "models", "list"],
        tmp_path,
        FACEREC_MODELS_DIR=str(models_dir),
    )

    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[2] for line in result.stdout.splitlines()[1:] if line}
    assert set(list_manifests()) <= set(rows)
    assert all(rows[name] == "ok" for name in SHARED_FILE_MANIFESTS)
    assert "packs: buffalo_l, buffalo_s" in result.stdout


@pytest.fixture
def served(environment: Path, tmp_path: Path, models_dir: Path) -> Iterator[tuple[int, Path]]:
    """The image's command, ``facerec serve``, from the installed wheel; yields port, log."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    environment_variables = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment_variables.update(
        FACEREC_MODELS_DIR=str(models_dir),
        FACEREC_DATA_DIR=str(tmp_path / "data"),
        FACEREC_LOG_LEVEL="WARNING",
    )
    command = [str(environment / "facerec"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=environment_variables, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield port, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_installed_wheel_serves_and_passes_the_images_healthcheck(
    served: tuple[int, Path], environment: Path, tmp_path: Path
) -> None:
    port, log_path = served
    probe = [str(environment / "python"), "-c", HEALTHCHECK.format(port=port)]
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        result = run(probe, tmp_path)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert result.returncode == 0, log_path.read_text(errors="replace")
