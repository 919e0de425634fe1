"""Headless Chromium for the page tests: start it, find its tab, drive it over the Chrome
DevTools protocol (the ``websockets`` package uvicorn already brings), stop it.

Every wait is event-driven (the page's DOM polled) with its own generous cap per step.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection

CHROMIUM = Path("/usr/bin/chromium")
# Each step (a page load, a name appearing) gets this long: generous for 2 busy cores.
STEP_TIMEOUT_S = 120.0
# Without these, chromium's background connections are refused by the closed network,
# many at a time, and it looks up Google's hosts at every start.
QUIET_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",  # chromium picks one, written to DevToolsActivePort
)


def start_chromium(
    profile: Path, page_url: str, log: Path, *extra_flags: str
) -> subprocess.Popen[bytes]:
    """Chromium in its own session on ``page_url``, its profile (and HOME) in ``profile``."""
    command = [str(CHROMIUM), *QUIET_FLAGS, f"--user-data-dir={profile}", *extra_flags, page_url]
    # HOME keeps chromium's crash-report database and caches inside the test's folder.
    environment = {**os.environ, "HOME": str(profile)}
    with log.open("wb") as output:
        return subprocess.Popen(
            command,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a child started in its own session, with everything it spawned."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands, evaluate, wait."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        self._connection.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self._connection.recv(timeout=STEP_TIMEOUT_S))
            if message.get("id") == command_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str) -> Any:
        """Poll ``expression`` until it is truthy, at most STEP_TIMEOUT_S for this step."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        page_state = self.evaluate(
            "JSON.stringify({url: location.href, text: document.body && document.body.innerText,"
            " answers: document.body && document.body.dataset.answers})"
        )
        pytest.fail(f"timed out waiting for {what}; page: {page_state}")


def devtools_page_url(profile: Path, page_url: str) -> str:
    """The DevTools WebSocket URL of the tab showing ``page_url``, once chromium has it."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        if port_file.is_file() and (lines := port_file.read_text().split()):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{lines[0]}/json/list") as reply:
                    targets = json.load(reply)
            except OSError:
                targets = []
            pages = [
                t
                for t in targets
                if t.get("type") == "page" and t.get("url", "").startswith(page_url)
            ]
            if pages:
                url: str = pages[0]["webSocketDebuggerUrl"]
                return url
        time.sleep(0.2)
    pytest.fail("chromium did not open its DevTools port in time")


def artifacts_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FACEREC_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
