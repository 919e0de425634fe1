"""A real ``facerec serve`` process for benchmarks: start-up time, memory, logs, stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from bench.common import REPO_ROOT

STARTUP_TIMEOUT_S = 3600.0  # a gallery rebuilt from SQLite at 1M faces takes minutes
_GALLERY_OPENED = re.compile(r"gallery opened in ([0-9.]+) s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """``python -m app.cli serve`` with the given FACEREC_* settings; ready on ``start``."""

    def __init__(self, settings: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
        environment.update({"FACEREC_LOG_LEVEL": "INFO", "FACEREC_LOG_FORMAT": "text"})
        environment.update(settings)
        self._environment = environment
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def start(self) -> ServerProcess:
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=self._environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + STARTUP_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"server exited with {self._process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    self.startup_s = time.perf_counter() - started
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("not started")
        return self._process.pid

    def gallery_open_s(self) -> float | None:
        """What the gallery reported for its own opening (snapshot or rebuild)."""
        found = _GALLERY_OPENED.findall(self.log())
        return float(found[-1]) if found else None

    def memory_mb(self) -> tuple[float, float]:
        """Resident memory now and its peak (VmRSS, VmHWM), in MiB."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (the gallery writes its snapshot on the way out), then wait."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
