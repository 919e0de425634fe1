"""End to end in a real headless browser: Debian's chromium, a fake webcam playing a video
made of a real face photo, the page at /, a real server process with API keys on.

The person on the video is enrolled nowhere: the page shows them as an unknown face
with a stable id, a name is typed for that unknown face and enrolled from the crops
the stream kept, and the name then shows on the video. Chromium is driven through
the Chrome DevTools protocol over its WebSocket (the ``websockets`` package uvicorn
already brings). Every wait is event-driven (the page's DOM polled) with its own
generous cap. The screenshot is kept under $FACEREC_TEST_ARTIFACTS (else the test's
tmp folder) and its path printed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from app.api.stream import STATIC_DIR
from tests.browser import (
    CHROMIUM,
    STEP_TIMEOUT_S,
    DevTools,
    artifacts_dir,
    devtools_page_url,
    start_chromium,
    stop,
)

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.serving import StartServer
    from tests.stream.conftest import LoadPhoto, MovingFrames

pytestmark = pytest.mark.slow

# Cap of each wait below; reaching one means something is stuck, not slow.
VIDEO_FPS = 10
VIDEO_FRAMES = 40  # 4 s, looped by chromium
SUBJECT = "George W. Bush"
COLLECTION = "browser"
CAMERA = "front-door"


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


def start_video_chromium(video: Path, profile: Path, page_url: str, log: Path) -> None:
    _processes.append(
        start_chromium(
            profile,
            page_url,
            log,
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}",
            "--window-size=1280,900",
        )
    )


_processes: list[subprocess.Popen[bytes]] = []


@pytest.fixture
def processes() -> Iterator[None]:
    yield
    while _processes:
        stop(_processes.pop())


def metric(text: str, series: str, camera: str) -> float:
    prefix = f'{series}{{camera="{camera}"}} '
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason=f"{CHROMIUM} is absent: apt-get install chromium (in CI, .ci/run installs it)",
)
@pytest.mark.usefixtures("processes")
def test_an_unknown_face_on_the_webcam_is_enrolled_from_the_page_and_named(
    tmp_path: Path,
    start_server: StartServer,
    lfw_photo: LfwPhoto,
    load_photo: LoadPhoto,
    moving_frames: MovingFrames,
) -> None:
    face = load_photo(lfw_photo("George_W_Bush", 65))
    face = np.repeat(np.repeat(face, 3, axis=0), 3, axis=1)[::2, ::2]  # 1.5x: a webcam close-up
    drift = moving_frames([(face, (120, 40))], VIDEO_FRAMES // 2, step=(2, 1))
    video = tmp_path / "webcam.y4m"
    write_y4m(video, drift + drift[::-1], VIDEO_FPS)  # forth and back: loops seamlessly

    server = start_server(tmp_path / "gallery")  # API keys on (the default)
    (admin,) = server.printed_keys()
    key = httpx.post(
        f"{server.url}/keys",
        headers={"X-API-Key": admin},
        json={"name": "door page", "collections": [COLLECTION]},
        timeout=STEP_TIMEOUT_S,
    )
    assert key.status_code == 201, key.text
    token = key.json()["api_key"]
    # The page itself needs no key, and is exactly the page shipped.
    served = httpx.get(f"{server.url}/", timeout=STEP_TIMEOUT_S)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/html")
    assert served.text == (STATIC_DIR / "index.html").read_text()

    profile = tmp_path / "chromium-profile"
    page_url = f"{server.url}/?collection={COLLECTION}&camera={CAMERA}"
    start_video_chromium(video, profile, page_url, tmp_path / "chromium.log")
    with connect(devtools_page_url(profile, page_url), max_size=None, open_timeout=30) as cdp:
        page = DevTools(cdp)
        page.wait_for(
            "document.readyState === 'complete' && !!document.getElementById('start')",
            "the page to load",
        )
        page.evaluate(
            f"const key = document.getElementById('api-key'); key.value = {json.dumps(token)};"
            "key.dispatchEvent(new Event('change'));"
            "document.getElementById('start').click()"
        )
        page.wait_for("Number(document.body.dataset.answers || 0) >= 3", "stream answers")
        assert page.evaluate("document.querySelectorAll('#labels li').length") == 1

        # Nobody is enrolled: the face becomes an unknown face with a stable id.
        unknown_id = page.wait_for(
            "document.querySelector('#unknowns li[data-unknown-id]')?.dataset.unknownId",
            "an unknown face",
        )
        assert unknown_id.startswith("unk_")
        assert (
            page.wait_for(
                "document.querySelector('#labels li')?.dataset.unknownId", "the unknown id in view"
            )
            == unknown_id
        )
        item = f"#unknowns li[data-unknown-id={json.dumps(unknown_id)}]"
        page.evaluate(
            f"const item = document.querySelector({json.dumps(item)});"
            f"item.querySelector('.enroll-unknown-name').value = {json.dumps(SUBJECT)};"
            "item.querySelector('.enroll-unknown').click()"
        )
        page.wait_for(
            "document.getElementById('enroll-status').dataset.state.match(/ok|error/) || "
            "document.querySelector('#unknowns .status[data-state=error]')",
            "the enrollment",
        )
        status = page.evaluate("document.getElementById('enroll-status').textContent")
        assert page.evaluate("document.getElementById('enroll-status').dataset.state") == "ok", (
            page.evaluate("document.getElementById('unknowns').innerText") or status
        )
        labels = "[...document.querySelectorAll('#labels li')].map(li => li.dataset.subject)"
        page.wait_for(f"{labels}.includes({json.dumps(SUBJECT)})", f"{SUBJECT!r} on the video")
        page.wait_for(
            f"[...document.querySelectorAll('#subjects li')]"
            f".some(li => li.dataset.subject === {json.dumps(SUBJECT)})",
            "the subject list",
        )
        assert page.evaluate("document.querySelectorAll('#unknowns li').length") == 0
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

    with httpx.Client(base_url=server.url, headers={"X-API-Key": admin}) as api:
        subjects = api.get("/subjects", params={"collection": COLLECTION})
        assert subjects.status_code == 200
        assert subjects.json()["total"] == 0
        # The page's camera name labels its stream's figures.
        metrics = api.get("/metrics").text
    assert metric(metrics, "facerec_stream_frames_processed_total", CAMERA) >= 3
    # The key never travelled in a URL: nothing of it is in the server's log.
    assert token.split("_", 2)[2] not in server.log()
