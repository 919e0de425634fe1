"""End to end in a real headless browser: Debian's chromium, a fake webcam playing a video
made of a real face photo, the page at /, a real server process.

Chromium is driven through the Chrome DevTools protocol over its WebSocket (the
``websockets`` package uvicorn already brings). The screenshot is kept under
$FACEREC_TEST_ARTIFACTS (else the test's tmp folder) and its path printed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import ClientConnection, connect

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.stream.conftest import LoadPhoto, MovingFrames

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
# The whole test stays under a minute: every wait below draws on one deadline.
TEST_BUDGET_S = 55.0
VIDEO_FPS = 10
VIDEO_FRAMES = 40  # 4 s, looped by chromium
SUBJECT = "George W. Bush"
COLLECTION = "browser"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- a fake webcam: YUV4MPEG2 (.y4m), the format chromium's fake capture device plays ---


def rgb_to_yuv420(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-range BT.601 (JPEG) Y, Cb, Cr planes; chroma averaged over 2x2 blocks."""
    red, green, blue = (frame[..., channel].astype(np.float32) for channel in range(3))
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    blue_diff = 128.0 - 0.168736 * red - 0.331264 * green + 0.5 * blue
    red_diff = 128.0 + 0.5 * red - 0.418688 * green - 0.081312 * blue

    def subsample(plane: np.ndarray) -> np.ndarray:
        height, width = plane.shape
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    return tuple(  # type: ignore[return-value]
        np.clip(np.rint(plane), 0, 255).astype(np.uint8)
        for plane in (luma, subsample(blue_diff), subsample(red_diff))
    )


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> None:
    height, width = frames[0].shape[:2]
    with path.open("wb") as video:
        video.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            video.write(b"FRAME\n")
            for plane in rgb_to_yuv420(frame):
                video.write(plane.tobytes())


# --- processes ----------------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a child started in its own session, with everything it spawned."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_server(models_dir: Path, data_dir: Path, log: Path, deadline: Deadline) -> str:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(
        FACEREC_MODELS_DIR=str(models_dir),
        FACEREC_DATA_DIR=str(data_dir),
        FACEREC_AUTH="false",  # the page has an API key field; this test runs without keys
        FACEREC_LOG_LEVEL="WARNING",
    )
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    _processes.append(process)
    while deadline.left() > 0:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready in time:\n{log.read_text()}")


def start_chromium(video: Path, profile: Path, page_url: str, log: Path) -> None:
    command = [
        str(CHROMIUM),
        "--headless=new",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",  # chromium picks one, written to DevToolsActivePort
        "--window-size=1280,900",
        page_url,
    ]
    # HOME keeps chromium's crash-report database and caches inside the test's folder.
    environment = {**os.environ, "HOME": str(profile)}
    with log.open("wb") as output:
        _processes.append(
            subprocess.Popen(
                command,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )


_processes: list[subprocess.Popen[bytes]] = []


@pytest.fixture
def processes() -> Iterator[None]:
    yield
    while _processes:
        stop(_processes.pop())


# --- the DevTools protocol ------------------------------------------------------------------


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands, evaluate, wait."""

    def __init__(self, connection: ClientConnection, deadline: Deadline) -> None:
        self._connection = connection
        self._deadline = deadline
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        self._connection.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self._connection.recv(timeout=max(self._deadline.left(), 1)))
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
        while self._deadline.left() > 0:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        page_state = self.evaluate(
            "JSON.stringify({url: location.href, text: document.body && document.body.innerText,"
            " answers: document.body && document.body.dataset.answers})"
        )
        pytest.fail(f"timed out waiting for {what}; page: {page_state}")


def devtools_page_url(profile: Path, page_url: str, deadline: Deadline) -> str:
    """The DevTools WebSocket URL of the tab showing ``page_url``, once chromium has it."""
    port_file = profile / "DevToolsActivePort"
    while deadline.left() > 0:
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


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason=f"{CHROMIUM} is absent: apt-get install chromium (in CI, .ci/run installs it)",
)
@pytest.mark.usefixtures("processes")
def test_a_person_enrolled_from_the_webcam_page_is_named_on_the_video(
    tmp_path: Path,
    models_dir: Path,
    lfw_photo: LfwPhoto,
    load_photo: LoadPhoto,
    moving_frames: MovingFrames,
) -> None:
    deadline = Deadline(TEST_BUDGET_S)
    face = load_photo(lfw_photo("George_W_Bush", 65))
    face = np.repeat(np.repeat(face, 3, axis=0), 3, axis=1)[::2, ::2]  # 1.5x: a webcam close-up
    drift = moving_frames([(face, (120, 40))], VIDEO_FRAMES // 2, step=(2, 1))
    video = tmp_path / "webcam.y4m"
    write_y4m(video, drift + drift[::-1], VIDEO_FPS)  # forth and back: loops seamlessly

    server = start_server(models_dir, tmp_path / "gallery", tmp_path / "server.log", deadline)
    profile = tmp_path / "chromium-profile"
    page_url = f"{server}/?collection={COLLECTION}"
    start_chromium(video, profile, page_url, tmp_path / "chromium.log")
    with connect(
        devtools_page_url(profile, page_url, deadline), max_size=None, open_timeout=10
    ) as connection:
        page = DevTools(connection, deadline)
        page.wait_for(
            "document.readyState === 'complete' && !!document.getElementById('start')",
            "the page to load",
        )
        page.evaluate("document.getElementById('start').click()")
        page.wait_for("Number(document.body.dataset.answers || 0) >= 3", "stream answers")
        assert page.evaluate("document.querySelectorAll('#labels li').length") == 1

        page.evaluate(
            f"document.getElementById('enroll-name').value = {json.dumps(SUBJECT)};"
            "document.getElementById('enroll-button').click()"
        )
        page.wait_for(
            "document.getElementById('enroll-status').dataset.state.match(/ok|error/)",
            "the enrollment",
        )
        status = page.evaluate("document.getElementById('enroll-status').textContent")
        assert page.evaluate("document.getElementById('enroll-status').dataset.state") == "ok", (
            status
        )
        labels = "[...document.querySelectorAll('#labels li')].map(li => li.dataset.subject)"
        page.wait_for(f"{labels}.includes({json.dumps(SUBJECT)})", f"{SUBJECT!r} on the video")
        page.wait_for(
            f"[...document.querySelectorAll('#subjects li')]"
            f".some(li => li.dataset.subject === {json.dumps(SUBJECT)})",
            "the subject list",
        )
        screenshot = artifacts_dir(tmp_path) / "stream-page.png"
        image = page.call("Page.captureScreenshot", format="png")["data"]
        screenshot.write_bytes(base64.b64decode(image))
        print(f"screenshot: {screenshot}")

        # Deleting the subject from the page takes the name off the video too.
        page.evaluate(
            f"document.querySelector('#subjects li[data-subject={json.dumps(SUBJECT)}] button')"
            ".click()"
        )
        page.wait_for(
            "!document.querySelector('#subjects li[data-subject]')", "the subject's deletion"
        )
        page.wait_for(f"!{labels}.includes({json.dumps(SUBJECT)})", "the name to disappear")

    faces = httpx.get(f"{server}/subjects", params={"collection": COLLECTION}).json()
    assert faces["total"] == 0
