"""The management page (/manage) and the API docs (/docs) in a real headless Chromium
against a real server with API keys on: the key first, enrollment from photo files with
the rejections shown, thumbnails, identification of a dropped photo with boxes and names,
deletion behind a confirmation. Screenshots go to $FACEREC_TEST_ARTIFACTS (else the
test's tmp folder); docs/img/ holds copies for the README."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from websockets.sync.client import connect

from tests.browser import (
    CHROMIUM,
    DevTools,
    artifacts_dir,
    devtools_page_url,
    start_chromium,
    stop,
)
from tests.serving import Server, server_environment

if TYPE_CHECKING:
    from conftest import LfwPhoto

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason=f"{CHROMIUM} is absent: apt-get install chromium (in CI, .ci/run installs it)",
    ),
]

SUBJECT = "Joseph Biden"
COLLECTION = "staff"


@pytest.fixture
def server(models_dir: Path, tmp_path: Path) -> Iterator[Server]:
    environment = server_environment(models_dir, tmp_path / "gallery", rate_limit_per_second="0")
    started = Server(environment, tmp_path / "server.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Path]:
    """A headless Chromium on about:blank; its profile folder."""
    profile = tmp_path / "chromium-profile"
    process = start_chromium(
        profile, "about:blank", tmp_path / "chromium.log", "--window-size=1400,900"
    )
    try:
        yield profile
    finally:
        stop(process)


def open_tab(profile: Path) -> Iterator[DevTools]:
    """The DevTools session of Chromium's one tab (use ``navigate`` to load pages)."""
    with connect(devtools_page_url(profile, "about:blank"), max_size=None) as link:
        page = DevTools(link)
        page.call("Page.enable")
        page.call("DOM.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield page


def navigate(page: DevTools, url: str) -> None:
    page.call("Page.navigate", url=url)
    page.wait_for(
        f"location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete'",
        f"{url} to load",
    )


def set_files(page: DevTools, selector: str, paths: list[Path]) -> None:
    """Choose files in an <input type=file>, as a user's file picker does."""
    found = page.call(
        "Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)})"
    )
    page.call(
        "DOM.setFileInputFiles",
        files=[str(path) for path in paths],
        objectId=found["result"]["objectId"],
    )


def drop_file(page: DevTools, selector: str, path: Path) -> None:
    """Drop a file on an element: a real DataTransfer holding a File with the bytes."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.evaluate(
        f"""(() => {{
          const bytes = Uint8Array.from(atob({json.dumps(data)}), c => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], {json.dumps(path.name)}, {{type: 'image/jpeg'}}));
          const zone = document.querySelector({json.dumps(selector)});
          for (const type of ['dragover', 'drop']) {{
            const init = {{dataTransfer: transfer, bubbles: true, cancelable: true}};
            zone.dispatchEvent(new DragEvent(type, init));
          }}
        }})()"""
    )


def screenshot(page: DevTools, tmp_path: Path, name: str) -> Path:
    path = artifacts_dir(tmp_path) / name
    path.write_bytes(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
    print(f"screenshot: {path}")
    return path


def text_of(page: DevTools, selector: str) -> Any:
    return page.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")


def test_the_management_page_enrolls_identifies_and_deletes_with_a_key(
    server: Server,
    browser: Path,
    tmp_path: Path,
    lfw_photo: LfwPhoto,
    photos: Path,
    grey_png: bytes,
) -> None:
    profile = browser
    (admin,) = server.printed_keys()
    grey = tmp_path / "no-face.png"
    grey.write_bytes(grey_png)
    for page in open_tab(profile):
        navigate(page, f"{server.url}/manage")
        # The key comes first, without any "unauthorized" greeting.
        page.wait_for("document.body.dataset.state === 'key'", "the key screen")
        assert "unauthorized" not in page.evaluate("document.body.innerText").lower()
        page.evaluate("document.getElementById('key-input').value = 'frk_not_a_key'")
        page.evaluate("document.getElementById('key-submit').click()")
        page.wait_for("document.getElementById('key-status').dataset.state === 'error'", "refusal")
        assert "not accepted" in text_of(page, "#key-status")
        page.evaluate(f"document.getElementById('key-input').value = {json.dumps(admin)}")
        page.evaluate("document.getElementById('key-submit').click()")
        page.wait_for("document.body.dataset.state === 'ready'", "the workspace")
        visible = "(id) => getComputedStyle(document.getElementById(id)).display !== 'none'"
        assert page.evaluate(f"[({visible})('key-screen'), ({visible})('workspace')]") == [
            False,
            True,
        ]

        # A new collection, then an enrollment from files: two faces and one rejection.
        page.evaluate(
            f"document.getElementById('new-collection-name').value = {json.dumps(COLLECTION)};"
            "document.querySelector('#new-collection button').click()"
        )
        page.wait_for(
            f"document.getElementById('collection').value === {json.dumps(COLLECTION)}",
            "the collection",
        )
        set_files(
            page,
            "#enroll-files",
            [lfw_photo("Joseph_Biden", 1), lfw_photo("Joseph_Biden", 3), grey],
        )
        page.evaluate(
            f"document.getElementById('enroll-name').value = {json.dumps(SUBJECT)};"
            "document.getElementById('enroll-submit').click()"
        )
        page.wait_for(
            "document.getElementById('enroll-result').dataset.state.match(/ok|error/)", "enrollment"
        )
        outcomes = page.evaluate(
            "[...document.querySelectorAll('#enroll-result li')]"
            ".map(li => [li.dataset.outcome, li.dataset.code || ''])"
        )
        assert outcomes == [["enrolled", ""], ["enrolled", ""], ["rejected", "no_face"]], outcomes
        assert "no-face.png" in text_of(page, "#enroll-result")

        # The subject is listed with a thumbnail made from its stored crop.
        row = f"#subjects li[data-subject={json.dumps(SUBJECT)}]"
        page.wait_for(f"!!document.querySelector({json.dumps(row)})", "the subject list")
        page.wait_for(
            f"(document.querySelector({json.dumps(row + ' img')}) || {{}}).naturalWidth === 112",
            "the thumbnail",
        )

        # A dropped group photo: boxes drawn, the enrolled face named, the others unknown.
        drop_file(page, "#drop-zone", photos / "face_recognition_obama_and_biden.jpg")
        page.wait_for(
            "document.getElementById('identify-result').dataset.state === 'ok'", "identify"
        )
        named = page.evaluate(
            "[...document.querySelectorAll('#identify-result li')].map(li => li.dataset.subject)"
        )
        assert named.count(SUBJECT) == 1, named
        assert len(named) == 3
        assert page.evaluate("document.getElementById('identify-canvas').dataset.faces") == "3"
        page.evaluate(f"document.querySelector({json.dumps(row)}).click()")
        page.wait_for(
            "document.querySelectorAll('#detail-faces li').length === 2", "the subject's faces"
        )
        screenshot(page, tmp_path, "manage-page.png")

        # Deleting asks first; cancelling keeps the subject, confirming removes it.
        page.evaluate("document.getElementById('delete-subject').click()")
        page.wait_for("document.getElementById('confirm').open", "the confirmation")
        assert SUBJECT in text_of(page, "#confirm-text")
        page.evaluate("document.getElementById('confirm-cancel').click()")
        page.wait_for("!document.getElementById('confirm').open", "the dialog to close")
        assert page.evaluate(f"!!document.querySelector({json.dumps(row)})")
        page.evaluate("document.getElementById('delete-subject').click()")
        page.wait_for("document.getElementById('confirm').open", "the confirmation")
        page.evaluate("document.getElementById('confirm-ok').click()")
        page.wait_for(f"!document.querySelector({json.dumps(row)})", "the deletion")

    with server.client(admin) as api:
        assert api.get("/subjects", params={"collection": COLLECTION}).json()["total"] == 0


def test_the_api_docs_render_without_internet(
    server: Server, browser: Path, tmp_path: Path
) -> None:
    profile = browser
    title = "(document.querySelector('.swagger-ui .info .title') || {}).textContent || ''"
    for page in open_tab(profile):
        navigate(page, f"{server.url}/docs")
        page.wait_for(f"({title}).startsWith('facerec')", "Swagger UI to render the schema")
        operations = page.evaluate("document.querySelectorAll('.opblock').length")
        assert operations >= 15
        screenshot(page, tmp_path, "api-docs.png")
        navigate(page, f"{server.url}/redoc")
        page.wait_for("!!document.querySelector('.api-content h1')", "ReDoc to render")
