"""scripts/serve.sh on a copy of this repository whose .venv is complete: it must start
the service without running pip, with no package index reachable (a real process)."""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving import STARTUP_TIMEOUT_S, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# Any pip call would need these to reach a package index; nothing listens there.
PIP_INSTALL_OFFLINE = [
    "pip",
    "install",
    "--quiet",
    "--no-deps",
    "--no-build-isolation",
    "--no-index",
]
NO_INDEX = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


def copy_repository(target: Path) -> None:
    """The files git would ship (tracked, and new ones not ignored): no .venv, no data."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def complete_venv(repo: Path) -> None:
    """A .venv holding every dependency (this interpreter's, through a .pth file) and an
    editable install of ``repo`` made offline: what scripts/setup.sh leaves behind."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", repo / ".venv"], check=True)
    python = repo / ".venv" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [python, "-m", *PIP_INSTALL_OFFLINE, "-e", str(repo)],
        cwd=repo,
        env={**os.environ, **NO_INDEX},
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "facerec"
    copy_repository(repo)
    complete_venv(repo)
    return repo


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_installed_check_passes_on_a_complete_venv_and_names_what_is_missing(
    repo_copy: Path,
) -> None:
    python = repo_copy / ".venv" / "bin" / "python"
    check = [python, "scripts/installed.py"]

    complete = subprocess.run(
        [*check, "cpu"], cwd=repo_copy, capture_output=True, text=True, check=False
    )
    unknown = subprocess.run(
        [*check, "cpu,nope"], cwd=repo_copy, capture_output=True, text=True, check=False
    )

    assert complete.returncode == 0, complete.stderr
    assert unknown.returncode == 1
    assert "unknown extra 'nope'" in unknown.stderr


def test_serve_script_starts_offline_without_reinstalling(
    repo_copy: Path, models_dir: Path, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(
        NO_INDEX,
        PORT=str(port),
        FACEREC_MODELS_DIR=str(models_dir),
        FACEREC_LOG_LEVEL="WARNING",
    )
    log = repo_copy / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["scripts/serve.sh"],
            cwd=repo_copy,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stop_later.append(process)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        pytest.fail(f"serve.sh did not start in time:\n{log.read_text()}")

    assert (repo_copy / "data" / "gallery.sqlite3").is_file()  # its default gallery folder
    assert "FACEREC FIRST ADMIN API KEY" in log.read_text()
    assert "export FACEREC_KEY=frk_" in log.read_text()  # the line users copy
    assert "pip" not in log.read_text().lower()
