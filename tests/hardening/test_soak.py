"""A bounded concurrency soak against a real server process: many clients mixing enroll,
identify, verify, delete and list on two collections with scoped keys. No 5xx, every
request completes within a generous client timeout (no deadlock), and the final gallery
equals what the acknowledged operations imply.

FACEREC_SOAK_SECONDS sets the duration (default 60); FACEREC_SOAK_CLIENTS the clients.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.hardening.people import Person, lfw_people
from tests.workers import Workers

if TYPE_CHECKING:
    from tests.serving import Server, StartServer

SOAK_SECONDS = float(os.environ.get("FACEREC_SOAK_SECONDS", "60"))
CLIENTS = int(os.environ.get("FACEREC_SOAK_CLIENTS", "8"))
PEOPLE_PER_CLIENT = 6
COLLECTIONS = ("soak-a", "soak-b")
# Operation mix, by weight.
OPERATIONS = {
    "enroll": 30,
    "identify": 25,
    "verify": 15,
    "delete_face": 10,
    "delete": 8,
    "list": 12,
}
# Client errors a valid LFW photo may legitimately get (a face the gates refuse).
FACE_REJECTIONS = {"no_face", "face_too_small", "low_det_score"}


@dataclass
class Client:
    """One soak client: its collection, key, people, and the gallery state it expects."""

    index: int
    collection: str
    key: str
    people: list[Person]
    strangers: list[Person]  # other clients' people: identify/verify probes
    expected: dict[str, set[str]] = field(default_factory=dict)  # subject -> face ids
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def run(self, server: Server, deadline: float) -> None:
        rng = random.Random(self.index)
        names, weights = zip(*OPERATIONS.items(), strict=True)
        with server.client(self.key) as http:
            while time.monotonic() < deadline and not self.failures:
                operation = rng.choices(names, weights)[0]
                try:
                    outcome = getattr(self, operation)(http, rng)
                except httpx.TransportError as exc:  # includes timeouts: a stuck server
                    self.failures.append(f"{operation}: {type(exc).__name__} {exc}")
                    return
                self.counts[f"{operation}:{outcome}"] += 1

    def check(self, operation: str, response: httpx.Response, *allowed: int) -> int:
        status = response.status_code
        if status >= 500 or status not in allowed:
            self.failures.append(f"{operation}: {status} {response.text[:300]}")
        return status

    def rejected_face(self, response: httpx.Response) -> bool:
        return response.status_code == 422 and response.json()["code"] in FACE_REJECTIONS

    # --- operations -------------------------------------------------------------------------

    def enroll(self, http: httpx.Client, rng: random.Random) -> int:
        person = rng.choice(self.people)
        response = http.post(
            "/enroll",
            params={"collection": self.collection},
            data={"subject": person.name, "face_policy": "largest"},
            files=person.upload(rng.randrange(len(person.photos))),
        )
        if self.rejected_face(response):
            return 422
        status = self.check("enroll", response, 201)
        if status == 201:
            faces = self.expected.setdefault(person.name, set())
            faces.update(face["face_id"] for face in response.json()["faces"])
        return status

    def identify(self, http: httpx.Client, rng: random.Random) -> int:
        person = rng.choice(self.people + self.strangers)
        photo = rng.choice(person.photos)
        response = http.post(
            "/identify",
            params={"collection": self.collection, "top_k": "3"},
            files={"image": (photo.name, photo.read_bytes())},
        )
        return self.check("identify", response, 200)

    def verify(self, http: httpx.Client, rng: random.Random) -> int:
        if self.expected and rng.random() < 0.5:
            subject = rng.choice(sorted(self.expected))
            photo = rng.choice(next(p for p in self.people if p.name == subject).photos)
            response = http.post(
                "/verify",
                params={"collection": self.collection},
                data={"subject": subject},
                files={"image": (photo.name, photo.read_bytes())},
            )
        else:
            first, second = rng.sample(self.people + self.strangers, 2)
            response = http.post(
                "/verify",
                files={
                    "image_a": (first.photos[0].name, first.photos[0].read_bytes()),
                    "image_b": (second.photos[0].name, second.photos[0].read_bytes()),
                },
            )
        if self.rejected_face(response):
            return 422
        return self.check("verify", response, 200)

    def delete_face(self, http: httpx.Client, rng: random.Random) -> int:
        if not self.expected:
            return 0
        subject = rng.choice(sorted(self.expected))
        face_id = rng.choice(sorted(self.expected[subject]))
        response = http.delete(f"/faces/{face_id}", params={"collection": self.collection})
        status = self.check("delete_face", response, 200)
        if status == 200:
            self.expected[subject].discard(face_id)
            if not self.expected[subject]:
                del self.expected[subject]
        return status

    def delete(self, http: httpx.Client, rng: random.Random) -> int:
        if not self.expected:
            return 0
        subject = rng.choice(sorted(self.expected))
        response = http.delete(f"/subjects/{subject}", params={"collection": self.collection})
        status = self.check("delete", response, 200)
        if status == 200:
            del self.expected[subject]
        return status

    def list(self, http: httpx.Client, rng: random.Random) -> int:
        response = http.get(
            "/subjects", params={"collection": self.collection, "limit": rng.randint(1, 50)}
        )
        return self.check("list", response, 200)


def gallery_state(http: httpx.Client, collection: str) -> dict[str, set[str]]:
    """Every subject of a collection with its face ids, as the server reports them."""
    listing = http.get("/subjects", params={"collection": collection, "limit": 500}).json()
    assert listing["total"] == len(listing["items"])
    state: dict[str, set[str]] = {}
    for item in listing["items"]:
        detail = http.get(f"/subjects/{item['subject']}", params={"collection": collection})
        faces = {face["face_id"] for face in detail.json()["faces"]}
        assert len(faces) == item["face_count"]
        state[item["subject"]] = faces
    return state


def test_mixed_concurrent_traffic_keeps_the_service_correct(
    start_server: StartServer, tmp_path: Path, data_root: Path
) -> None:
    server = start_server(
        tmp_path / "gallery",
        auth="on",
        rate_limit_per_second="0",
        inference_workers="2",
        inference_queue=str(4 * CLIENTS),  # admission never refuses: 503 would be a 5xx
    )
    (admin,) = server.printed_keys()
    with server.client(admin) as http:
        keys = {
            collection: http.post(
                "/keys", json={"name": collection, "collections": [collection]}
            ).json()["api_key"]
            for collection in COLLECTIONS
        }
    people = lfw_people(data_root, CLIENTS * PEOPLE_PER_CLIENT, skip=100)
    clients = [
        Client(
            index=i,
            collection=COLLECTIONS[i % len(COLLECTIONS)],
            key=keys[COLLECTIONS[i % len(COLLECTIONS)]],
            people=people[i::CLIENTS],
            strangers=people[(i + 1) % CLIENTS :: CLIENTS],
        )
        for i in range(CLIENTS)
    ]
    deadline = time.monotonic() + SOAK_SECONDS
    workers = Workers()
    for client in clients:
        workers.start(client.run, server, deadline)
    workers.join(timeout_s=SOAK_SECONDS + 300)  # any client raising or stuck fails here

    assert [failure for client in clients for failure in client.failures] == []
    assert server.alive()
    totals = sum((client.counts for client in clients), Counter())
    for operation in ("enroll:201", "identify:200", "verify:200", "list:200"):
        assert totals[operation] > 0, totals
    with server.client(admin) as http:
        ready = http.get("/ready").json()
        for collection in COLLECTIONS:
            expected: dict[str, set[str]] = {}
            for client in clients:
                if client.collection == collection:
                    expected.update(client.expected)
            assert gallery_state(http, collection) == expected
            faces = sum(len(ids) for ids in expected.values())
            assert ready["collections"].get(collection, 0) == faces
        assert 'code="internal_error"' not in http.get("/metrics").text
