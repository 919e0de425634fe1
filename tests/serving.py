"""Real `facerec serve` processes for the hardening tests: start, wait, kill -9, read logs."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60.0
# Generous: a request that takes longer than this on 2 cores is a deadlock, not load.
REQUEST_TIMEOUT_S = 120.0
# How much of a server's log a failure report shows.
LOG_TAIL_CHARS = 20_000
_BANNER_KEY = re.compile(r"X-API-Key: (frk_[0-9a-f]{16}_[A-Za-z0-9_-]{43})")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(models_dir: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    """The parent's environment without its FACEREC_* settings, plus the given ones."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(
        FACEREC_MODELS_DIR=str(models_dir),
        FACEREC_DATA_DIR=str(data_dir),
        FACEREC_LOG_LEVEL="WARNING",
    )
    environment.update({f"FACEREC_{name.upper()}": value for name, value in settings.items()})
    return environment


class Server:
    """One `python -m app.cli serve` child on a free port; stdout+stderr in a log file."""

    def __init__(self, environment: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.killed = False
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                cwd=REPO,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_9(self) -> None:
        self.killed = True  # first: a client that sees the connection drop can tell why
        self.process.kill()
        assert self.process.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dump_threads_and_stop(self) -> str:
        """For a failure report: with PYTHONFAULTHANDLER set in its environment, SIGABRT
        makes the process write every thread's stack to its log before it dies; the
        log's tail (those stacks) is returned."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log()[-LOG_TAIL_CHARS:]

    def printed_keys(self) -> list[str]:
        """Every API key secret the process printed (the first-start admin key)."""
        return _BANNER_KEY.findall(self.log())

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key} if key else None
        return httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S, headers=headers)


StartServer = Callable[..., Server]
