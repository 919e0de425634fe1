"""kill -9 in the middle of concurrent enrollments: after a restart every acknowledged
enrollment is present and identifiable, and nothing half-written is visible."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.hardening.people import Person, lfw_people
from tests.workers import Workers

if TYPE_CHECKING:
    from tests.serving import Server, StartServer

COLLECTION = "crash"
CLIENTS = 4
PEOPLE_PER_CLIENT = 12
# Acknowledged enrollments to wait for before the kill; the other clients are mid-request.
ACKS_BEFORE_KILL = 10
EMBEDDING_BYTES = 512 * 4
ENOUGH_ACKS_TIMEOUT_S = 300
JOIN_TIMEOUT_S = 60
# Client errors a valid LFW photo may legitimately get (a face the gates refuse).
FACE_REJECTIONS = {"no_face", "face_too_small", "low_det_score"}


@dataclass(frozen=True)
class Ack:
    subject: str
    face_ids: frozenset[str]
    probe: Path  # an enrolled photo: identifying it must find the subject


class Acknowledged:
    """The enrollments the server acknowledged (201), from every client thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acks: list[Ack] = []
        self.enough = threading.Event()

    def add(self, ack: Ack) -> None:
        with self._lock:
            self._acks.append(ack)
            if len(self._acks) >= ACKS_BEFORE_KILL:
                self.enough.set()

    def all(self) -> list[Ack]:
        with self._lock:
            return list(self._acks)


def enroll_until_killed(
    server: Server, key: str, people: list[Person], acknowledged: Acknowledged
) -> list[int]:
    """Enroll each person until the server dies; the statuses it answered. Any answer
    but 201 or a face rejection (422) raises, and the test fails with it (tests/workers)."""
    statuses: list[int] = []
    with server.client(key) as http:
        for person in people:
            try:
                response = http.post(
                    "/enroll",
                    params={"collection": COLLECTION},
                    data={"subject": person.name, "face_policy": "largest"},
                    files=person.upload(0, 1),
                )
            except httpx.TransportError:
                return statuses  # the server died under us: this one was never acknowledged
            statuses.append(response.status_code)
            assert response.status_code in {201, 422}, (person.name, response.text)
            if response.status_code == 422:
                assert response.json()["code"] in FACE_REJECTIONS, response.text
                continue
            faces = response.json()["faces"]
            acknowledged.add(
                Ack(person.name, frozenset(f["face_id"] for f in faces), person.photos[0])
            )
    return statuses


def check_database(data_dir: Path) -> int:
    """Invariants read straight from SQLite; returns the number of faces."""
    database = f"file:{data_dir / 'gallery.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(database, uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        empty_subjects = db.execute(
            "SELECT COUNT(*) FROM subjects s WHERE NOT EXISTS "
            "(SELECT 1 FROM faces f WHERE f.collection = s.collection AND f.subject = s.name)"
        ).fetchone()[0]
        assert empty_subjects == 0, "a subject without faces is visible"
        orphans = db.execute(
            "SELECT COUNT(*) FROM faces f WHERE NOT EXISTS "
            "(SELECT 1 FROM subjects s WHERE s.collection = f.collection AND s.name = f.subject)"
        ).fetchone()[0]
        assert orphans == 0, "a face without its subject is visible"
        bad_vectors = db.execute(
            "SELECT COUNT(*) FROM faces WHERE embedding IS NULL OR length(embedding) != ?",
            (EMBEDDING_BYTES,),
        ).fetchone()[0]
        assert bad_vectors == 0, "a face without a whole vector is visible"
        faces: int = db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        return faces


def test_acknowledged_enrollments_survive_kill_9_during_concurrent_enrollments(
    start_server: StartServer, tmp_path: Path, data_root: Path
) -> None:
    data_dir = tmp_path / "gallery"
    first = start_server(data_dir, auth="on", rate_limit_per_second="0")
    (admin,) = first.printed_keys()
    with first.client(admin) as http:
        created = http.post("/keys", json={"name": "enroller", "collections": [COLLECTION]})
        assert created.status_code == 201
        key = created.json()["api_key"]

    people = lfw_people(data_root, CLIENTS * PEOPLE_PER_CLIENT)
    acknowledged = Acknowledged()
    workers = Workers()
    for i in range(CLIENTS):
        workers.start(enroll_until_killed, first, key, people[i::CLIENTS], acknowledged)
    deadline = time.monotonic() + ENOUGH_ACKS_TIMEOUT_S
    while not acknowledged.enough.wait(0.2):
        # A client that failed (or finished) early must not leave the test waiting.
        assert workers.running() == CLIENTS, workers.join(0)
        assert time.monotonic() < deadline, "too few enrollments acknowledged"
    assert first.alive(), first.log()
    first.kill_9()  # several enrollments in flight: no shutdown, no flush
    statuses = workers.join(JOIN_TIMEOUT_S)  # every client: no 5xx, no error, none stuck
    acks = acknowledged.all()
    assert len(acks) >= ACKS_BEFORE_KILL
    assert len(acks) == sum(s.count(201) for s in statuses)
    assert sum(len(s) for s in statuses) < len(people), "every enrollment finished before the kill"

    second = start_server(data_dir, auth="on")
    assert second.printed_keys() == []
    with second.client(key) as http:  # the key acknowledged before the crash still works
        listing = http.get("/subjects", params={"collection": COLLECTION, "limit": 500}).json()
        listed = {item["subject"]: item["face_count"] for item in listing["items"]}
        for ack in acks:
            detail = http.get(f"/subjects/{ack.subject}", params={"collection": COLLECTION})
            assert detail.status_code == 200, f"acknowledged {ack.subject} is missing"
            assert {face["face_id"] for face in detail.json()["faces"]} == ack.face_ids
            found = http.post(
                "/identify",
                params={"collection": COLLECTION},
                files={"image": (ack.probe.name, ack.probe.read_bytes())},
            ).json()["faces"]
            matches = [face["match"]["subject"] for face in found if face["match"]]
            assert ack.subject in matches, f"{ack.subject} is not identifiable after restart"
    with second.client(admin) as http:  # collection sizes are for admin keys
        ready = http.get("/ready").json()
    assert all(count >= 1 for count in listed.values())
    assert ready["collections"].get(COLLECTION, 0) == sum(listed.values())
    second.stop()
    assert check_database(data_dir) == sum(listed.values())
