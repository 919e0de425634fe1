"""Zero-downtime model swap against a real server process (issue 13).

CFP people are enrolled through the API; a second real recognizer
(``w600k_mbf_int8_fast``: the same ONNX file without flip-sum, another model id
and threshold) is activated while a client keeps identifying; people enrolled and
deleted during the re-embedding are found (or not) in the new generation; the
server restarts on the active generation; rollback returns to the first one with
the people enrolled since the swap re-embedded into it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from app.inference.catalog import resolve_manifest
from tests.serving import REQUEST_TIMEOUT_S, Server, StartServer
from tests.swapping import (
    enroll,
    frontal,
    identify,
    keep_identifying,
    matched,
    ready,
    wait_for_swap,
)
from tests.workers import Workers

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "staff"
NEW_MANIFEST = REPO / "models" / "manifests" / "w600k_mbf_int8_fast.json"
# (subject, CFP identity): two frontal photos enrolled, a third one identified.
PEOPLE = [
    ("Ada", "001"),
    ("Bruno", "002"),
    ("Chiara", "003"),
    ("Dmitri", "004"),
    ("Emeka", "005"),
    ("Farah", "006"),
]
DELETED_DURING = "Dmitri"
LATE = ("Greta", "007")  # enrolled while the swap re-embeds
AFTER = ("Hiro", "008")  # enrolled after the switch, before the rollback
# One crop per step and a pause: the 12 faces take several seconds to re-embed, so
# the test's enroll and delete land while it runs (the test checks that they did).
SWAP_SETTINGS = {
    "swap_batch_size": "1",
    "swap_pause_ms": "400",
    # one admin key polls /ready while another thread identifies: no budget in the way
    "rate_limit_per_second": "1000",
    "rate_limit_burst": "1000",
}


def test_model_swap_while_identifying_then_restart_and_roll_back(
    start_server: StartServer, tmp_path: Path, data_root: Path
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, **SWAP_SETTINGS)
    (admin_key,) = server.printed_keys()
    new_model_id = resolve_manifest(str(NEW_MANIFEST))[0].model_id
    with server.client(admin_key) as http:
        for subject, identity in PEOPLE:
            enroll(http, COLLECTION, subject, [frontal(data_root, identity, n) for n in (1, 2)])
        before = ready(http)
        old_model_id = before["recognizer"]["model_id"]
        assert before["generation"] == {"number": 0, "model_id": old_model_id}
        assert old_model_id != new_model_id

        stop = threading.Event()
        workers = Workers()
        workers.start(
            keep_identifying,
            server,
            admin_key,
            COLLECTION,
            frontal(data_root, "001", 3),
            "Ada",
            stop,
        )
        started = http.post("/admin/models/activate", json={"manifest": str(NEW_MANIFEST)})
        assert started.status_code == 202, started.text
        assert started.json()["target_model_id"] == new_model_id
        again = http.post("/admin/models/activate", json={"manifest": str(NEW_MANIFEST)})
        assert again.status_code == 409
        assert again.json()["code"] == "model_swap_running"

        while ready(http)["swap"]["state"] == "loading":
            time.sleep(0.1)
        enroll(http, COLLECTION, LATE[0], [frontal(data_root, LATE[1], 1)])
        deleted = http.delete(f"/subjects/{DELETED_DURING}", params={"collection": COLLECTION})
        assert deleted.status_code == 200, deleted.text
        during = ready(http)
        assert during["swap"]["state"] == "copying", "the writes must land during the copy"
        assert during["recognizer"]["model_id"] == old_model_id

        after = wait_for_swap(http)
        stop.set()
        (answers,) = workers.join(REQUEST_TIMEOUT_S)
        assert after["swap"]["state"] == "done", after
        assert after["recognizer"]["model_id"] == new_model_id
        new_manifest = resolve_manifest(str(NEW_MANIFEST))[0]
        assert new_manifest.thresholds is not None
        assert after["threshold"] == new_manifest.thresholds.match != before["threshold"]
        assert after["generation"] == {"number": 1, "model_id": new_model_id}
        assert after["gallery_faces"] == 2 * (len(PEOPLE) - 1) + 1
        assert metric(http, "facerec_gallery_generation") == 1
        assert metric(http, "facerec_swap_running") == 0
        done = metric(http, "facerec_swap_faces_done")
        assert done == metric(http, "facerec_swap_faces_total") == after["swap"]["faces_done"]
        assert done >= after["gallery_faces"]  # every face, the late one included
        # Old model until the switch, the new one after; never back.
        switch = answers.index(new_model_id)
        assert switch > 0
        assert set(answers[:switch]) == {old_model_id}
        assert set(answers[switch:]) == {new_model_id}

        check_new_generation(http, data_root, new_model_id, admin_key)

    server.stop()
    restart_then_roll_back(start_server, data_dir, admin_key, data_root, old_model_id, new_model_id)


def check_new_generation(
    http: httpx.Client, data_root: Path, new_model_id: str, admin_key: str
) -> None:
    """Everyone but the deleted one identified by the new model; the generation's record."""
    for subject, identity in [*PEOPLE, LATE]:
        body = identify(http, COLLECTION, frontal(data_root, identity, 3))
        assert body["model"]["recognizer"] == new_model_id
        assert matched(body) == (None if subject == DELETED_DURING else subject), subject
    gone = http.get(f"/subjects/{DELETED_DURING}", params={"collection": COLLECTION})
    assert gone.status_code == 404
    record = http.get("/admin/models").json()
    (activated,) = [g for g in record["generations"] if g["number"] == 1]
    assert activated["model_id"] == new_model_id
    assert activated["manifest_path"] == str(NEW_MANIFEST)
    assert activated["activations"][0]["by"] == admin_key.split("_")[1]


def restart_then_roll_back(
    start_server: StartServer,
    data_dir: Path,
    admin_key: str,
    data_root: Path,
    old_model_id: str,
    new_model_id: str,
) -> None:
    server = start_server(data_dir, **SWAP_SETTINGS)
    assert "FACEREC_RECOGNIZER=w600k_mbf_int8 is not the recognizer" in server.log()
    with server.client(admin_key) as http:
        restarted = ready(http)
        assert restarted["generation"] == {"number": 1, "model_id": new_model_id}
        assert restarted["recognizer"]["model_id"] == new_model_id
        assert matched(identify(http, COLLECTION, frontal(data_root, LATE[1], 3))) == LATE[0]

        enroll(http, COLLECTION, AFTER[0], [frontal(data_root, AFTER[1], 1)])
        rolled = cli(server, admin_key, "rollback")  # facerec models rollback: waits
        assert rolled.returncode == 0, rolled.stderr
        assert rolled.stdout.strip() == f"generation 0 serves {old_model_id}"
        back = ready(http)
        assert back["swap"]["state"] == "done", back
        assert back["generation"] == {"number": 0, "model_id": old_model_id}
        for subject, identity in [("Ada", "001"), LATE, AFTER]:
            body = identify(http, COLLECTION, frontal(data_root, identity, 3))
            assert body["model"]["recognizer"] == old_model_id
            assert matched(body) == subject
        assert http.post("/admin/models/rollback").status_code == 202  # to 1 again
        assert wait_for_swap(http)["generation"]["number"] == 1


def cli(server: Server, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``facerec models ARGS --url`` against ``server``, the admin key in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "models", *args, "--url", server.url],
        cwd=REPO,
        env={**os.environ, "FACEREC_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT_S,
        check=False,
    )


def metric(http: httpx.Client, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", http.get("/metrics").text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


REFUSED = [
    ("relative/manifest.json", "relative_path"),
    ("/nonexistent/manifest.json", "not_found"),
    ("/etc/passwd", "not_a_manifest"),
    (str(REPO / "models" / "manifests" / "scrfd_500m.json"), "not_a_recognizer"),
    (str(REPO / "models" / "manifests" / "buffalo_l_w600k_r50.json"), "model_file_missing"),
]


def test_activate_is_for_admin_keys_and_refuses_what_is_not_a_usable_recognizer(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "data")
    (admin_key,) = server.printed_keys()
    with server.client(admin_key) as http:
        created = http.post("/keys", json={"name": "camera", "collections": [COLLECTION]})
        assert created.status_code == 201, created.text
        scoped_key = created.json()["api_key"]
        with server.client(scoped_key) as scoped:
            for path in ("/admin/models/activate", "/admin/models/rollback"):
                response = scoped.post(path, json={"manifest": str(NEW_MANIFEST)})
                assert response.status_code == 403, response.text
        for manifest, reason in REFUSED:
            response = http.post("/admin/models/activate", json={"manifest": manifest})
            assert response.status_code == 422, response.text
            error = response.json()
            assert (error["code"], error["details"]["reason"]) == ("model_swap_rejected", reason)
            assert "root:" not in response.text  # never the file's contents
        refused = cli(server, admin_key, "activate", "no-such-manifest.json")
        assert refused.returncode == 1
        assert refused.stderr.startswith("facerec: error: [model_swap_rejected] no manifest file")
        nothing = http.post("/admin/models/rollback")
        assert nothing.status_code == 409
        assert nothing.json()["code"] == "no_previous_generation"
        assert "swap" not in ready(http)


def test_a_server_killed_during_the_copy_comes_back_on_the_old_generation(
    start_server: StartServer, tmp_path: Path, data_root: Path
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, **SWAP_SETTINGS)
    (admin_key,) = server.printed_keys()
    with server.client(admin_key) as http:
        for subject, identity in PEOPLE[:3]:
            enroll(http, COLLECTION, subject, [frontal(data_root, identity, n) for n in (1, 2)])
        old_model_id = ready(http)["recognizer"]["model_id"]
        started = http.post("/admin/models/activate", json={"manifest": str(NEW_MANIFEST)})
        assert started.status_code == 202, started.text
        while ready(http)["swap"]["state"] == "loading":
            time.sleep(0.05)
        assert ready(http)["swap"]["state"] == "copying"
        assert (data_dir / "generations" / "1").is_dir()
    server.kill_9()

    server = start_server(data_dir, **SWAP_SETTINGS)
    assert "removed gallery generations [1]: their swap did not finish" in server.log()
    assert not (data_dir / "generations" / "1").exists()
    with server.client(admin_key) as http:
        body = ready(http)
        assert body["generation"] == {"number": 0, "model_id": old_model_id}
        assert "swap" not in body
        assert body["gallery_faces"] == 6
        assert matched(identify(http, COLLECTION, frontal(data_root, "002", 3))) == "Bruno"
