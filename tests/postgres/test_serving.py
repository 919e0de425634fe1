"""Real ``facerec serve`` replicas on one real PostgreSQL: what users of many replicas rely on.

* Two replicas share keys, enrollments and deletions (an enrollment acknowledged by
  one is identified by the other's very next request).
* kill -9 of a replica during concurrent enrollments on both loses nothing acknowledged.
* The database restarting under a serving replica: fast 503 ``database_unavailable``,
  then service again, without restarting the replica.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hardening.people import Person, lfw_people
from tests.pgserver import PostgresServer
from tests.postgres.conftest import PROPAGATION_TIMEOUT_S, eventually
from tests.serving import Server, server_environment

pytestmark = pytest.mark.slow

COLLECTION = "replicas"
ENROLLERS_PER_REPLICA = 2
PEOPLE_PER_ENROLLER = 8
ACKS_BEFORE_KILL = 6


def start_replicas(
    models_dir: Path, tmp_path: Path, database_url: str, count: int, **settings: str
) -> list[Server]:
    """``count`` servers on one database, started together (as an orchestrator would)."""
    environment = server_environment(
        models_dir,
        tmp_path / "unused-data-dir",  # nothing may be written there with a database
        database_url=database_url,
        auth="on",
        rate_limit_per_second="0",
        **settings,
    )
    environment["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread (diagnostics)
    servers = [Server(environment, tmp_path / f"replica-{n}.log") for n in range(count)]
    for server in servers:
        server.wait_ready()
    return servers


# What the database was doing, for a failure report: every session of the test's
# database, then its locks but the shared ones every statement takes on its tables.
_ACTIVITY_SQL = """
SELECT pid, application_name, state, wait_event_type || ':' || wait_event,
       round(extract(epoch FROM now() - xact_start)::numeric, 1) AS xact_s,
       pg_blocking_pids(pid), left(regexp_replace(query, '\\s+', ' ', 'g'), 120)
  FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
 ORDER BY pid
"""
_LOCKS_SQL = """
SELECT l.pid, l.locktype, l.mode, l.granted, l.relation::regclass, l.page, l.tuple,
       l.transactionid, l.objid
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE a.datname = current_database() AND l.pid <> pg_backend_pid()
   AND l.locktype <> 'virtualxid'
   AND NOT (l.locktype = 'relation' AND l.granted
            AND l.mode IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock'))
 ORDER BY l.granted, l.pid
"""


def hang_report(what: str, database: PostgresServer, url: str, servers: list[Server]) -> str:
    """Why ``what`` got no answer: the database's sessions and locks, then every
    replica's threads (the live ones are stopped by the dump)."""
    name = url.rsplit("/", 1)[-1]
    parts = [f"{what}\n--- pg_stat_activity (pid|app|state|wait|xact_s|blocked by|query)"]
    parts.append(database.psql(_ACTIVITY_SQL, database=name))
    parts.append("--- pg_locks (pid|type|mode|granted|relation|page|tuple|xid|objid)")
    parts.append(database.psql(_LOCKS_SQL, database=name))
    for number, server in enumerate(servers):
        parts.append(f"--- replica {number} (killed: {server.killed}), log tail and threads")
        parts.append(server.dump_threads_and_stop())
    return "\n".join(parts)


@pytest.fixture
def replicas(models_dir: Path, tmp_path: Path, postgres_url: str) -> Iterator[list[Server]]:
    servers = start_replicas(models_dir, tmp_path, postgres_url, 2)
    yield servers
    for server in servers:
        server.stop()
    assert not (tmp_path / "unused-data-dir").exists()


@pytest.fixture(scope="module")
def people(data_root: Path) -> list[Person]:
    return lfw_people(data_root, 2 * ENROLLERS_PER_REPLICA * PEOPLE_PER_ENROLLER + 2)


def the_admin_key(servers: list[Server]) -> str:
    printed = [key for server in servers for key in server.printed_keys()]
    assert len(printed) == 1, "exactly one replica creates the first admin key"
    return printed[0]


def enroll(client: httpx.Client, person: Person, photo: int = 0) -> httpx.Response:
    return client.post(
        "/enroll",
        params={"collection": COLLECTION},
        data={"subject": person.name, "face_policy": "largest"},
        files=person.upload(photo),
    )


def identified(client: httpx.Client, photo: Path) -> str | None:
    response = client.post(
        "/identify",
        params={"collection": COLLECTION},
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
    )
    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    match = faces[0]["match"] if faces else None
    return None if match is None else str(match["subject"])


def status_with(client: httpx.Client, token: str) -> int:
    response = client.get(
        "/subjects", params={"collection": COLLECTION}, headers={"X-API-Key": token}
    )
    return response.status_code


def test_two_replicas_share_keys_enrollments_and_deletions(
    replicas: list[Server], people: list[Person]
) -> None:
    replica_a, replica_b = replicas
    admin = the_admin_key(replicas)
    alice = people[0]
    with replica_a.client(admin) as on_a, replica_b.client(admin) as on_b:
        created = on_a.post("/keys", json={"name": "camera", "collections": [COLLECTION]})
        assert created.status_code == 201, created.text
        token, key_id = created.json()["api_key"], created.json()["key_id"]
        assert eventually(lambda: status_with(on_b, token), 200) == 200

        enrolled = enroll(on_a, alice)
        assert enrolled.status_code == 201, enrolled.text
        # B's very next request finds what A acknowledged: searches read the database.
        assert identified(on_b, alice.photos[1]) == alice.name
        detail = on_b.get(f"/subjects/{alice.name}", params={"collection": COLLECTION})
        assert [face["face_id"] for face in detail.json()["faces"]] == [
            face["face_id"] for face in enrolled.json()["faces"]
        ]

        deleted = on_b.delete(f"/subjects/{alice.name}", params={"collection": COLLECTION})
        assert deleted.status_code == 200, deleted.text
        assert identified(on_a, alice.photos[1]) is None  # A's very next request

        revoked = on_b.delete(f"/keys/{key_id}")
        assert revoked.status_code == 200, revoked.text
        assert status_with(on_b, token) == 401
        assert eventually(lambda: status_with(on_a, token), 401) == 401

        ready = [on_a.get("/ready").json(), on_b.get("/ready").json()]
    assert ready[0]["gallery_faces"] == ready[1]["gallery_faces"] == 0


def enroll_all(
    server: Server,
    key: str,
    people: list[Person],
    acknowledged: list[tuple[str, frozenset[str]]],
    lock: threading.Lock,
    errors: list[BaseException],
) -> None:
    try:
        with server.client(key) as client:
            for person in people:
                try:
                    response = enroll(client, person)
                except httpx.TransportError:
                    if not server.killed:
                        raise  # a replica that does not answer is a hang, not a kill
                    return  # the replica died under us: never acknowledged
                assert response.status_code < 500, response.text
                if response.status_code == 201:
                    faces = frozenset(face["face_id"] for face in response.json()["faces"])
                    with lock:
                        acknowledged.append((person.name, faces))
    except BaseException as error:
        errors.append(error)


def test_kill_9_of_a_replica_during_concurrent_enrollments_loses_nothing_acknowledged(
    replicas: list[Server], people: list[Person], postgres_server: PostgresServer, postgres_url: str
) -> None:
    victim, survivor = replicas
    admin = the_admin_key(replicas)
    acknowledged: list[tuple[str, frozenset[str]]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    batches = [
        people[n * PEOPLE_PER_ENROLLER : (n + 1) * PEOPLE_PER_ENROLLER]
        for n in range(2 * ENROLLERS_PER_REPLICA)
    ]
    threads = [
        threading.Thread(
            target=enroll_all,
            args=(victim if n % 2 == 0 else survivor, admin, batch, acknowledged, lock, errors),
        )
        for n, batch in enumerate(batches)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 600
    while len(acknowledged) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.kill_9()  # typically in the middle of the victim's next enrollments
    for thread in threads:
        thread.join(600)

    def report(what: str) -> str:
        return hang_report(what, postgres_server, postgres_url, replicas)

    if errors:
        pytest.fail(report(f"enrollments failed: {errors!r}"))
    assert len(acknowledged) >= ACKS_BEFORE_KILL
    try:
        with survivor.client(admin) as client:
            for subject, face_ids in acknowledged:
                detail = client.get(f"/subjects/{subject}", params={"collection": COLLECTION})
                assert detail.status_code == 200, (subject, detail.text)
                assert face_ids <= {face["face_id"] for face in detail.json()["faces"]}
            listing = client.get("/subjects", params={"collection": COLLECTION, "limit": 100})
            total_faces = sum(item["face_count"] for item in listing.json()["items"])
            ready = eventually(lambda: client.get("/ready").json()["gallery_faces"], total_faces)
    except httpx.TimeoutException as exc:
        pytest.fail(report(f"the survivor did not answer: {exc!r}"))
    # What the survivor counts is what the database holds: nothing half-written.
    assert ready == total_faces
    assert all(item["face_count"] >= 1 for item in listing.json()["items"])


@pytest.fixture
def own_database_server(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, to restart under a serving replica."""
    server = PostgresServer({"fsync": "off"})
    yield server
    server.destroy()


def request_outcome(call: Callable[[], httpx.Response]) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = call()
    return response.status_code, response.json(), time.monotonic() - started


def test_a_database_restart_gives_fast_503s_then_service_without_a_replica_restart(
    own_database_server: PostgresServer,
    models_dir: Path,
    tmp_path: Path,
    people: list[Person],
) -> None:
    url = own_database_server.create_database("facerec")
    (replica,) = start_replicas(models_dir, tmp_path, url, 1, database_timeout_s="1")
    admin = the_admin_key([replica])
    alice = people[0]
    try:
        with replica.client(admin) as client:
            assert enroll(client, alice).status_code == 201

            own_database_server.stop()
            listing = request_outcome(
                lambda: client.get("/subjects", params={"collection": COLLECTION})
            )
            photo = alice.photos[1]
            identify = request_outcome(
                lambda: client.post(
                    "/identify",
                    params={"collection": COLLECTION},
                    files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                )
            )
            alive = client.get("/health").status_code
            own_database_server.start()
            restarted = time.monotonic()

            for status, body, _ in (listing, identify):
                assert status == 503, body
                assert body["code"] == "database_unavailable"
            assert alive == 200  # the process is alive; only the database is away

            def subjects_status() -> int:
                return client.get("/subjects", params={"collection": COLLECTION}).status_code

            assert eventually(subjects_status, 200, timeout_s=PROPAGATION_TIMEOUT_S) == 200
            recovered_s = time.monotonic() - restarted
            assert identified(client, alice.photos[1]) == alice.name
        print(
            f"\nwhile the database was down: GET /subjects answered 503 in "
            f"{listing[2] * 1000:.0f} ms, POST /identify in {identify[2] * 1000:.0f} ms; "
            f"served again {recovered_s:.1f} s after the database restarted"
        )
    finally:
        replica.stop()
