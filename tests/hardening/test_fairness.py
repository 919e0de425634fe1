"""One tenant cannot starve another (real server, one inference worker): enrollments run
one inference turn per photo and turns go round-robin by API key, so a key with a deep
queue of work delays another key's identify by about one photo, not by its whole queue.

The assertions are on order (which answer arrived first), not on durations.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.hardening.people import lfw_people
from tests.hardening.raw import wait_until

if TYPE_CHECKING:
    from tests.serving import StartServer

HEAVY_REQUESTS = 3
PHOTOS_PER_REQUEST = 6
CAP_S = 300.0  # generous: a hang, not slowness, fails the test


def test_a_tenant_with_queued_enrollments_does_not_starve_another_tenants_identify(
    start_server: StartServer, tmp_path: Path, data_root: Path
) -> None:
    server = start_server(
        tmp_path / "gallery",
        auth="on",
        rate_limit_per_second="0",
        inference_workers="1",
        inference_queue="16",
    )
    (admin,) = server.printed_keys()
    with server.client(admin) as http:
        heavy, light = (
            http.post("/keys", json={"name": n, "collections": [n]}).json()["api_key"]
            for n in ("heavy", "light")
        )
    people = lfw_people(data_root, HEAVY_REQUESTS, min_photos=PHOTOS_PER_REQUEST)
    finished: list[tuple[str, int, float]] = []  # (who, status, when)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def post(who: str, key: str, **request: object) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=CAP_S) as http:
                response = http.post(headers={"X-API-Key": key}, **request)  # type: ignore[arg-type]
            with lock:
                finished.append((who, response.status_code, time.monotonic()))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    heavy_threads = [
        threading.Thread(
            target=post,
            args=("heavy", heavy),
            kwargs={
                "url": "/enroll",
                "params": {"collection": "heavy"},
                "data": {"subject": person.name, "face_policy": "largest"},
                "files": person.upload(*range(PHOTOS_PER_REQUEST)),
            },
        )
        for person in people
    ]
    for thread in heavy_threads:
        thread.start()

    def gauge(name: str) -> float:
        for line in httpx.get(f"{server.url}/metrics", timeout=CAP_S).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    # Every heavy request is in, two photos hold the turns one worker has (one in the
    # CPU stages, one waiting for the recognizer: docs/performance.md) and the others'
    # next photos wait for a turn: the identify arrives into real contention.
    turns = 2
    assert wait_until(
        lambda: (
            gauge("facerec_inference_admitted") == HEAVY_REQUESTS
            and gauge("facerec_inference_turns_waiting") == HEAVY_REQUESTS - turns
        ),
        CAP_S,
    )
    probe = people[0].photos[-1]
    light_thread = threading.Thread(
        target=post,
        args=("light", light),
        kwargs={
            "url": "/identify",
            "params": {"collection": "light"},
            "files": {"image": (probe.name, probe.read_bytes())},
        },
    )
    light_thread.start()
    for thread in [*heavy_threads, light_thread]:
        thread.join(CAP_S)
    assert errors == []
    assert sorted(status for _, status, _ in finished) == [200] + [201] * HEAVY_REQUESTS
    order = [who for who, _, _ in sorted(finished, key=lambda entry: entry[2])]
    # 18 heavy photos were queued before the identify; it waits for about one of them (a
    # turn per photo, round-robin by key), so it is answered before any enrollment has
    # done its 6 photos. (Before: one turn per request, first come first served.)
    assert order[0] == "light", order
