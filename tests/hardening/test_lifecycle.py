"""The process lifecycle under attack and mishap (real server processes): SIGTERM with
clients that never finish, a port already in use on the first start, and minting an
admin key from the machine while the server runs."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from app.auth.bootstrap import FIRST_KEY_BANNER
from app.auth.store import KEYS_FILENAME
from tests.hardening.raw import PART_START, Trickler, request_head, wait_until
from tests.serving import REPO, server_environment

if TYPE_CHECKING:
    from tests.serving import StartServer

EXIT_CAP_S = 60.0  # a hang fails; the grace period is 1 s


def test_sigterm_cuts_trickling_clients_after_the_grace_period_and_exits(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(
        tmp_path / "gallery",
        auth="on",
        shutdown_grace_s="1",
        body_timeout_s="600",  # the body timeout must not be what ends them
        header_timeout_s="600",
        log_level="INFO",
    )
    (admin,) = server.printed_keys()
    head = request_head(
        "POST",
        "/identify",
        {"X-API-Key": admin, "Content-Type": "multipart/form-data; boundary=hostile"},
        content_length=1 << 20,
    )
    body_trickler = Trickler(server.port, head + PART_START, interval_s=0.2).start()
    header_trickler = Trickler(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", 0.2).start()
    try:
        assert wait_until(lambda: "facerec_inference_admitted 1.0" in _metrics(server.url))
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=EXIT_CAP_S)
        assert wait_until(body_trickler.cut.is_set)
        assert wait_until(header_trickler.cut.is_set)
    finally:
        body_trickler.stop()
        header_trickler.stop()
    assert body_trickler.errors == header_trickler.errors == []
    # uvicorn re-raises the signal it handled once it has shut down
    assert server.process.returncode in (0, -signal.SIGTERM)
    log = server.log()
    assert "timeout graceful shutdown exceeded" in log
    assert "Application shutdown complete" in log


def _metrics(url: str) -> str:
    try:
        return httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.TransportError:
        return ""


def test_a_port_in_use_fails_before_the_first_admin_key_is_created(
    models_dir: Path, tmp_path: Path, start_server: StartServer
) -> None:
    data_dir = tmp_path / "gallery"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        failed = subprocess.run(  # noqa: PLW1510 (the status is asserted)
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=server_environment(models_dir, data_dir, auth="on"),
            capture_output=True,
            text=True,
            timeout=EXIT_CAP_S,
        )
    assert failed.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in failed.stderr
    assert FIRST_KEY_BANNER not in failed.stderr + failed.stdout
    assert not (data_dir / KEYS_FILENAME).exists()
    # The next start on a free port shows the first admin key, and it works.
    server = start_server(data_dir, auth="on")
    (token,) = server.printed_keys()
    with server.client(token) as admin:
        assert admin.get("/keys").status_code == 200


def test_an_admin_key_minted_on_the_machine_works_at_once_on_the_running_server(
    start_server: StartServer, tmp_path: Path, models_dir: Path
) -> None:
    data_dir = tmp_path / "gallery"
    server = start_server(data_dir, auth="on")
    (first,) = server.printed_keys()
    environment = server_environment(models_dir, data_dir)
    minted = subprocess.run(  # noqa: PLW1510 (the status is asserted)
        [sys.executable, "-m", "app.cli", "keys", "create-admin", "--name", "recovery"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=EXIT_CAP_S,
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.startswith("frk_")
    assert token not in minted.stderr
    with server.client(token) as recovered:
        keys = recovered.get("/keys")
        assert keys.status_code == 200
        assert [(k["name"], k["admin"]) for k in keys.json()["items"]] == [
            ("admin", True),
            ("recovery", True),
        ]
    with server.client(first) as original:
        assert original.get("/keys").status_code == 200
    listing = subprocess.run(  # noqa: PLW1510 (the status is asserted)
        [sys.executable, "-m", "app.cli", "keys", "list", "--data-dir", str(data_dir)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=EXIT_CAP_S,
    )
    assert listing.returncode == 0
    assert "recovery" in listing.stdout
    assert token.split("_", 2)[2] not in listing.stdout
    with closing(sqlite3.connect(data_dir / KEYS_FILENAME)) as db:
        assert db.execute("SELECT COUNT(*) FROM api_keys WHERE admin = 1").fetchone() == (2,)


def test_minting_needs_an_existing_data_folder(tmp_path: Path, models_dir: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(  # noqa: PLW1510 (the status is asserted)
        [sys.executable, "-m", "app.cli", "keys", "create-admin", "--data-dir", str(missing)],
        cwd=REPO,
        env=server_environment(models_dir, missing),
        capture_output=True,
        text=True,
        timeout=EXIT_CAP_S,
    )
    assert result.returncode == 1
    assert "is not a folder" in result.stderr
    assert result.stdout == ""
    assert not missing.exists()
