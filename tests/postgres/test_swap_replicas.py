"""Zero-downtime model swap on PostgreSQL: real ``facerec serve`` replicas on one database.

Replica A activates a second real recognizer (``w600k_mbf_int8_fast``) while clients
keep identifying on A and on B: every answer is a 200 naming the right person, by the
old model until that replica switches and by the new one after, on both; a person
enrolled on B while A re-embeds is found by the new model on both; B restarts on the
active generation; B rolls back and A follows. A replica killed mid-copy leaves
generation 0 serving, its abandoned copy is discarded when it comes back, and a later
activation works.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.inference.catalog import resolve_manifest
from tests.postgres.conftest import eventually
from tests.postgres.test_serving import the_admin_key
from tests.serving import REQUEST_TIMEOUT_S, Server, server_environment
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

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NEW_MANIFEST = REPO / "models" / "manifests" / "w600k_mbf_int8_fast.json"
COLLECTION = "staff"
PEOPLE = [("Ada", "001"), ("Bruno", "002"), ("Chiara", "003"), ("Dmitri", "004")]
LATE = ("Greta", "007")  # enrolled on B while A re-embeds
# One crop per step and a pause: the copy lasts seconds, so B's enrollment lands in it.
SWAP_SETTINGS = {
    "swap_batch_size": "1",
    "swap_pause_ms": "400",
    "rate_limit_per_second": "0",
}
# A replica hears of a switch by NOTIFY, then loads the recognizer: seconds when busy.
FOLLOW_TIMEOUT_S = 120.0


class Replicas:
    """Servers on one database, started (and restarted) with the same environment."""

    def __init__(self, models_dir: Path, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.environment = server_environment(
            models_dir,
            tmp_path / "unused-data-dir",  # nothing may be written there with a database
            database_url=database_url,
            auth="on",
            **SWAP_SETTINGS,
        )
        self.servers: list[Server] = []

    def start(self) -> Server:
        server = Server(self.environment, self.tmp_path / f"replica-{len(self.servers)}.log")
        self.servers.append(server)
        server.wait_ready()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def replicas(models_dir: Path, tmp_path: Path, postgres_url: str) -> Iterator[Replicas]:
    started = Replicas(models_dir, tmp_path, postgres_url)
    yield started
    started.stop_all()
    assert not (tmp_path / "unused-data-dir").exists()


def generation_of(http: httpx.Client) -> int:
    return int(ready(http)["generation"]["number"])


def switched_once(answers: list[str], old: str, new: str) -> None:
    """Old model until the switch, the new one after; never back."""
    switch = answers.index(new)
    assert switch > 0, answers
    assert set(answers[:switch]) == {old}
    assert set(answers[switch:]) == {new}


def test_two_replicas_swap_while_identifying_then_restart_and_roll_back(
    replicas: Replicas, data_root: Path
) -> None:
    replica_a, replica_b = replicas.start(), replicas.start()
    admin = the_admin_key([replica_a, replica_b])
    new_model_id = resolve_manifest(str(NEW_MANIFEST))[0].model_id
    with replica_a.client(admin) as on_a, replica_b.client(admin) as on_b:
        for subject, identity in PEOPLE:
            enroll(on_a, COLLECTION, subject, [frontal(data_root, identity, n) for n in (1, 2)])
        old_model_id = ready(on_a)["recognizer"]["model_id"]
        assert ready(on_b)["generation"] == {"number": 0, "model_id": old_model_id}
        assert old_model_id != new_model_id

        stop = threading.Event()
        workers = Workers()
        for server in (replica_a, replica_b):
            workers.start(
                keep_identifying,
                server,
                admin,
                COLLECTION,
                frontal(data_root, "001", 3),
                "Ada",
                stop,
                name=f"identify on {server.url}",
            )
        started = on_a.post("/admin/models/activate", json={"manifest": str(NEW_MANIFEST)})
        assert started.status_code == 202, started.text
        while ready(on_a)["swap"]["state"] == "loading":
            time.sleep(0.1)
        # One job at a time over all replicas: B is told while A's runs.
        busy = on_b.post("/admin/models/activate", json={"manifest": str(NEW_MANIFEST)})
        assert busy.status_code == 409, busy.text
        assert busy.json()["code"] == "model_swap_running"
        enroll(on_b, COLLECTION, LATE[0], [frontal(data_root, LATE[1], 1)])
        assert ready(on_a)["swap"]["state"] == "copying", "B's enrollment must land in the copy"

        after = wait_for_swap(on_a)
        assert after["swap"]["state"] == "done", after
        assert after["generation"] == {"number": 1, "model_id": new_model_id}
        assert eventually(lambda: generation_of(on_b), 1, FOLLOW_TIMEOUT_S) == 1
        stop.set()
        answers_a, answers_b = workers.join(REQUEST_TIMEOUT_S)
        switched_once(answers_a, old_model_id, new_model_id)
        switched_once(answers_b, old_model_id, new_model_id)
        for http in (on_a, on_b):
            body = identify(http, COLLECTION, frontal(data_root, LATE[1], 3))
            assert body["model"]["recognizer"] == new_model_id
            assert matched(body) == LATE[0]
            assert ready(http)["gallery_faces"] == 2 * len(PEOPLE) + 1
        listing = on_b.get("/admin/models").json()
        assert listing["swap_supported"] is True
        assert (listing["active"], listing["previous"]) == (1, 0)
        assert [g["model_id"] for g in listing["generations"]] == [old_model_id, new_model_id]

    replica_b.stop()
    replica_b = replicas.start()
    with replica_a.client(admin) as on_a, replica_b.client(admin) as on_b:
        assert ready(on_b)["generation"] == {"number": 1, "model_id": new_model_id}
        assert matched(identify(on_b, COLLECTION, frontal(data_root, "002", 3))) == "Bruno"

        rolled = on_b.post("/admin/models/rollback")
        assert rolled.status_code == 202, rolled.text
        back = wait_for_swap(on_b)
        assert back["swap"]["state"] == "done", back
        assert back["generation"] == {"number": 0, "model_id": old_model_id}
        assert eventually(lambda: generation_of(on_a), 0, FOLLOW_TIMEOUT_S) == 0
        for http in (on_a, on_b):
            body = identify(http, COLLECTION, frontal(data_root, LATE[1], 3))
            assert body["model"]["recognizer"] == old_model_id
            assert matched(body) == LATE[0]  # enrolled during the swap: re-embedded back


def test_a_replica_killed_mid_copy_leaves_generation_zero_serving_and_a_later_swap_works(
    replicas: Replicas, data_root: Path
) -> None:
    replica_a, replica_b = replicas.start(), replicas.start()
    admin = the_admin_key([replica_a, replica_b])
    new_model_id = resolve_manifest(str(NEW_MANIFEST))[0].model_id
    with replica_a.client(admin) as on_a, replica_b.client(admin) as on_b:
        for subject, identity in PEOPLE:
            enroll(on_a, COLLECTION, subject, [frontal(data_root, identity, n) for n in (1, 2)])
        old_model_id = ready(on_a)["recognizer"]["model_id"]
        started = on_a.post("/admin/models/activate", json={"manifest": str(NEW_MANIFEST)})
        assert started.status_code == 202, started.text
        while ready(on_a)["swap"]["state"] == "loading":
            time.sleep(0.05)
        assert ready(on_a)["swap"]["state"] == "copying"
        replica_a.kill_9()

        assert ready(on_b)["generation"] == {"number": 0, "model_id": old_model_id}
        assert matched(identify(on_b, COLLECTION, frontal(data_root, "002", 3))) == "Bruno"
        enroll(on_b, COLLECTION, LATE[0], [frontal(data_root, LATE[1], 1)])  # writes go on

    replica_a = replicas.start()
    assert "removed gallery generations [1]: their swap did not finish" in replica_a.log()
    with replica_a.client(admin) as on_a, replica_b.client(admin) as on_b:
        assert ready(on_a)["generation"] == {"number": 0, "model_id": old_model_id}
        assert [g["number"] for g in on_a.get("/admin/models").json()["generations"]] == [0]
        started = on_b.post("/admin/models/activate", json={"manifest": str(NEW_MANIFEST)})
        assert started.status_code == 202, started.text
        done = wait_for_swap(on_b)
        assert done["swap"]["state"] == "done", done
        assert done["generation"] == {"number": 2, "model_id": new_model_id}
        assert eventually(lambda: generation_of(on_a), 2, FOLLOW_TIMEOUT_S) == 2
        for http in (on_a, on_b):
            body = identify(http, COLLECTION, frontal(data_root, LATE[1], 3))
            assert body["model"]["recognizer"] == new_model_id
            assert matched(body) == LATE[0]
