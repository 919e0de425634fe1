"""The real server process (`python -m app.cli serve`): durability across kill -9, refusing a
gallery of another recognizer, and concurrent requests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.inference.catalog import resolve_manifest
from app.main import create_app
from tests import serving
from tests.serving import REQUEST_TIMEOUT_S, STARTUP_TIMEOUT_S, StartServer, free_port
from tests.workers import Workers

if TYPE_CHECKING:
    from conftest import LfwPhoto

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "office"
# (subject, LFW person, photos enrolled, another photo of them to identify)
PEOPLE = [
    ("George W. Bush", "George_W_Bush", (7, 16), 65),
    ("Donald Rumsfeld", "Donald_Rumsfeld", (39,), 51),
    ("Gerhard Schröder", "Gerhard_Schroeder", (5,), 25),
    ("Jacques Chirac", "Jacques_Chirac", (2,), 19),
]


def server_environment(models_dir: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    """Keys off: tests/hardening covers them."""
    return serving.server_environment(models_dir, data_dir, **{"auth": "off", **settings})


def serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]


def upload(photo: Path) -> tuple[str, tuple[str, bytes]]:
    return "images", (photo.name, photo.read_bytes())


def identify_one(http: httpx.Client, photo: Path) -> dict[str, Any]:
    response = http.post(
        "/identify",
        params={"collection": COLLECTION},
        files={"image": (photo.name, photo.read_bytes())},
    )
    assert response.status_code == 200, response.text
    (face,) = response.json()["faces"]
    return dict(face)


# --- durability ---------------------------------------------------------------------------


def test_acknowledged_enrollments_survive_kill_9(
    start_server: StartServer, tmp_path: Path, lfw_photo: LfwPhoto
) -> None:
    data_dir = tmp_path / "gallery"
    first = start_server(data_dir, auth="off")
    with httpx.Client(base_url=first.url, timeout=REQUEST_TIMEOUT_S) as http:
        for subject, person, enrolled, _ in PEOPLE:
            response = http.post(
                "/enroll",
                params={"collection": COLLECTION},
                data={"subject": subject},
                files=[upload(lfw_photo(person, number)) for number in enrolled],
            )
            assert response.status_code == 201, response.text
    first.kill_9()  # right after the last acknowledgement: no shutdown, no flush

    second = start_server(data_dir, auth="off")

    with httpx.Client(base_url=second.url, timeout=REQUEST_TIMEOUT_S) as http:
        listing = http.get("/subjects", params={"collection": COLLECTION}).json()
        assert {item["subject"]: item["face_count"] for item in listing["items"]} == {
            subject: len(enrolled) for subject, _, enrolled, _ in PEOPLE
        }
        for subject, person, _, probe in PEOPLE:
            face = identify_one(http, lfw_photo(person, probe))
            assert face["match"] is not None, f"{subject} not identified after restart"
            assert face["match"]["subject"] == subject


# --- one recognizer per gallery -------------------------------------------------------------


@pytest.fixture(scope="module")
def refused_start(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory, lfw_photo: LfwPhoto
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A gallery made with w600k_mbf_int8, then `serve` with a renamed copy of its manifest."""
    data_dir = tmp_path_factory.mktemp("gallery")
    photo = lfw_photo("Donald_Rumsfeld", 39)
    with TestClient(
        create_app(Settings(models_dir=models_dir, data_dir=data_dir, auth=False))
    ) as client:
        response = client.post("/enroll", data={"subject": "Rumsfeld"}, files=[upload(photo)])
        assert response.status_code == 201, response.text
    _, manifest_path = resolve_manifest("w600k_mbf_int8")
    renamed = json.loads(manifest_path.read_text()) | {"name": "w600k_mbf_int8_renamed"}
    copy = tmp_path_factory.mktemp("manifests") / "renamed.json"
    copy.write_text(json.dumps(renamed))
    environment = server_environment(models_dir, data_dir, recognizer=str(copy))

    result = subprocess.run(
        serve_command(free_port()),
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
        check=False,
    )
    return data_dir, result


def test_a_gallery_refuses_to_start_with_another_recognizer(
    refused_start: tuple[Path, subprocess.CompletedProcess[str]], models_dir: Path
) -> None:
    data_dir, result = refused_start

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "gallery_model_mismatch" in output or "GalleryModelMismatch" in output
    assert "holds embeddings of model 'w600k_mbf_int8@" in output
    assert "loaded recognizer is 'w600k_mbf_int8_renamed@" in output
    # The refused start left the gallery as it was.
    settings = Settings(models_dir=models_dir, data_dir=data_dir, auth=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/subjects").json()["total"] == 1


def test_a_refused_start_follows_the_cli_error_contract(
    refused_start: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, result = refused_start

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("facerec: error: ")
    assert "w600k_mbf_int8_renamed@" in last_line


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_identify_requests_succeed_while_an_enroll_runs(
    start_server: StartServer, tmp_path: Path, lfw_photo: LfwPhoto
) -> None:
    server = start_server(tmp_path / "gallery", auth="off", inference_workers="2")
    known, person, (enrolled,), probe = PEOPLE[1]
    newcomer, new_person, new_photos, new_probe = PEOPLE[0]
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.post(
            "/enroll",
            params={"collection": COLLECTION},
            data={"subject": known},
            files=[upload(lfw_photo(person, enrolled))],
        )
        assert response.status_code == 201, response.text

    identifiers = 6
    start = threading.Barrier(identifiers + 1, timeout=REQUEST_TIMEOUT_S)
    enroll_done = threading.Event()

    def enroll_newcomer() -> int:
        """The newcomer's enrollment: its faces enrolled."""
        files = [upload(lfw_photo(new_person, number)) for number in (*new_photos, 145)]
        try:
            with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
                start.wait()
                response = http.post(
                    "/enroll",
                    params={"collection": COLLECTION},
                    data={"subject": newcomer},
                    files=files,
                )
        finally:
            enroll_done.set()  # the identify loops end even when this one fails
        assert response.status_code == 201, response.text
        return len(response.json()["faces"])

    def identify_known() -> list[tuple[str | None, bool]]:
        """(matched subject, answered while the enroll ran) of each identify."""
        photo = lfw_photo(person, probe)
        answers: list[tuple[str | None, bool]] = []
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            start.wait()
            for attempt in range(20):
                if attempt >= 2 and enroll_done.is_set():
                    break
                response = http.post(
                    "/identify",
                    params={"collection": COLLECTION},
                    files={"image": (photo.name, photo.read_bytes())},
                )
                during_enroll = not enroll_done.is_set()
                assert response.status_code == 200, response.text
                (face,) = response.json()["faces"]
                answers.append((face["match"]["subject"] if face["match"] else None, during_enroll))
        return answers

    workers = Workers()
    workers.start(enroll_newcomer)
    for _ in range(identifiers):
        workers.start(identify_known)
    enrolled_faces, *identified = workers.join(timeout_s=2 * REQUEST_TIMEOUT_S)

    assert enrolled_faces == 3
    answers = [answer for answers in identified for answer in answers]
    assert all(len(answers) >= 2 for answers in identified)
    assert any(during for _, during in answers), "no identify overlapped the enroll"
    assert {match for match, _ in answers} == {known}
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
        face = identify_one(http, lfw_photo(new_person, new_probe))
        assert face["match"]["subject"] == newcomer


# --- one server per data folder -----------------------------------------------------------


def test_a_second_server_on_the_same_data_folder_refuses_to_start_clearly(
    start_server: StartServer, tmp_path: Path, models_dir: Path, lfw_photo: LfwPhoto
) -> None:
    data_dir = tmp_path / "gallery"
    first = start_server(data_dir, auth="off")

    second = subprocess.run(
        serve_command(free_port()),
        cwd=REPO,
        env=server_environment(models_dir, data_dir),
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
        check=False,
    )

    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    last_line = second.stderr.strip().splitlines()[-1]
    assert last_line.startswith("facerec: error: ")
    assert "is already open" in last_line
    assert f"pid {first.pid}" in last_line
    # The first server never noticed: it still enrolls and answers.
    with httpx.Client(base_url=first.url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.post(
            "/enroll",
            params={"collection": COLLECTION},
            data={"subject": "Rumsfeld"},
            files=[upload(lfw_photo("Donald_Rumsfeld", 39))],
        )
        assert response.status_code == 201, response.text


# --- the fast recognizer profile -------------------------------------------------------------


def test_the_fast_recognizer_profile_is_served_with_its_own_threshold(
    start_server: StartServer, tmp_path: Path, lfw_photo: LfwPhoto
) -> None:
    fast, _ = resolve_manifest("w600k_mbf_int8_fast")
    default, _ = resolve_manifest("w600k_mbf_int8")
    assert fast.thresholds is not None
    assert default.thresholds is not None
    assert not fast.augment.flip
    server = start_server(tmp_path / "gallery", auth="off", recognizer="w600k_mbf_int8_fast")

    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
        ready = http.get("/ready").json()
        assert ready["recognizer"]["model_id"] == fast.model_id != default.model_id
        assert ready["threshold"] == pytest.approx(fast.thresholds.match)
        for subject, person, enrolled, _ in PEOPLE:
            response = http.post(
                "/enroll",
                params={"collection": COLLECTION},
                data={"subject": subject},
                files=[upload(lfw_photo(person, number)) for number in enrolled],
            )
            assert response.status_code == 201, response.text
        for subject, person, _, probe in PEOPLE:
            face = identify_one(http, lfw_photo(person, probe))
            assert face["match"] is not None, f"{subject} not identified by the fast profile"
            assert face["match"]["subject"] == subject
            assert face["match"]["similarity"] >= fast.thresholds.match
