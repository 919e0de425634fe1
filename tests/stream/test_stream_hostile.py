"""Hostile WebSocket clients against a real `facerec serve` process with API keys on.

Each case asserts the exact close code (and the reason's stable code), and that a
healthy stream of another key kept being answered meanwhile and plain HTTP requests
are still served. Behaviour that only a real server shows (uvicorn answers HTTP
403 when an app closes before accepting; logs; TCP connections cut without a close
frame) is why these run against a process, not the in-process test client.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.auth.bootstrap import FIRST_KEY_BANNER
from tests.serving import Server, server_environment
from tests.stream.conftest import compose_frame, encode_jpeg
from tests.stream.pacing import settle_server

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.stream.conftest import LoadPhoto

pytestmark = pytest.mark.slow

# Generous caps on event-driven waits: reaching one means the server is stuck.
WAIT_S = 60.0
IDLE_TIMEOUT_S = 3.0
KEY_CHECK_S = 0.5
PER_KEY = 2
MAX_STREAMS = 4
MAX_FRAME_BYTES = 300_000
HEALTHY_PERIOD_S = 0.3


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(buffer, format="GIF")
    return buffer.getvalue()


def ws_url(server: Server, query: str = "collection=lobby") -> str:
    return f"ws://127.0.0.1:{server.port}/stream?{query}"


def open_stream(
    server: Server, token: str | None, query: str = "collection=lobby", **options: Any
) -> ClientConnection:
    protocols = ["facerec.v1", f"facerec.key.{token}"] if token else None
    return connect(
        ws_url(server, query),
        subprotocols=options.pop("subprotocols", protocols),  # type: ignore[arg-type]
        open_timeout=WAIT_S,
        close_timeout=5,
        max_size=None,
        **options,
    )


def closed_with(connection: ClientConnection) -> tuple[int, str]:
    """(code, reason's stable code) of the close the server sends next."""
    deadline = time.monotonic() + WAIT_S
    with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 - answers may come first
        while time.monotonic() < deadline:
            connection.recv(timeout=WAIT_S)
    received = closed.value.rcvd
    assert received is not None, "the server cut the connection without a close frame"
    return received.code, received.reason.split(":")[0]


@dataclass
class Healthy:
    """A stream of its own key answered in lock-step in a thread, about 3 frames a second."""

    server: Server
    token: str
    frame: bytes
    answers: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    progressed: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        try:
            with open_stream(self.server, self.token) as stream:
                while not self.stop.is_set():
                    stream.send(self.frame)
                    json.loads(stream.recv(timeout=WAIT_S))
                    with self.progressed:
                        self.answers += 1
                        self.progressed.notify_all()
                    time.sleep(HEALTHY_PERIOD_S)
        except BaseException as error:  # collected, asserted at every check
            self.errors.append(error)

    def still_served(self) -> None:
        """The healthy stream answers two more frames, and HTTP still answers."""
        with self.progressed:
            target = self.answers + 2
            assert self.progressed.wait_for(
                lambda: self.answers >= target or bool(self.errors), timeout=WAIT_S
            )
        assert self.errors == []
        assert httpx.get(f"{self.server.url}/health", timeout=WAIT_S).status_code == 200


@dataclass
class Setup:
    server: Server
    admin: str
    frame: bytes
    healthy: Healthy

    def key(self, *collections: str) -> tuple[str, str]:
        """(key id, token) of a new key for ``collections`` (default: lobby)."""
        response = httpx.post(
            f"{self.server.url}/keys",
            headers={"X-API-Key": self.admin},
            json={"name": "camera", "collections": list(collections or ["lobby"])},
            timeout=WAIT_S,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return body["key_id"], body["api_key"]

    def revoke(self, key_id: str) -> None:
        response = httpx.delete(
            f"{self.server.url}/keys/{key_id}", headers={"X-API-Key": self.admin}, timeout=WAIT_S
        )
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def setup(
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    load_photo: LoadPhoto,
    lfw_photo: LfwPhoto,
) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("hostile-stream")
    environment = server_environment(
        models_dir,
        folder / "data",
        log_level="INFO",
        stream_idle_timeout_s=str(IDLE_TIMEOUT_S),
        stream_key_check_s=str(KEY_CHECK_S),
        stream_max_per_key=str(PER_KEY),
        stream_max_concurrent=str(MAX_STREAMS),
        stream_max_frame_bytes=str(MAX_FRAME_BYTES),
        # Unlimited: floods and slow consumers are about the socket, not the key's budget
        # (test_frames_are_charged_to_the_key_rate_budget has a server of its own).
        rate_limit_per_second="0",
    )
    server = Server(environment, folder / "server.log")
    try:
        server.wait_ready()
        (admin,) = server.printed_keys()
        photo = load_photo(lfw_photo("Gerhard_Schroeder", 25))
        frame = encode_jpeg(compose_frame([(photo, (195, 115))], (0, 0)))
        setup = Setup(server, admin, frame, Healthy(server, "", frame))
        _, token = setup.key()
        setup.healthy = Healthy(server, token, frame)
        worker = threading.Thread(target=setup.healthy.run)
        worker.start()
        try:
            setup.healthy.still_served()
            yield setup
        finally:
            setup.healthy.stop.set()
            worker.join(timeout=WAIT_S)
        assert setup.healthy.errors == []
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("query", "protocols", "headers", "expected"),
    [
        ("collection=lobby", None, {}, "unauthorized"),  # no key at all
        ("collection=lobby", ["facerec.v1", "facerec.key.frk_0_x"], {}, "unauthorized"),
        ("collection=lobby", ["facerec.v1", "facerec.key.", "facerec.key.a"], {}, "unauthorized"),
        ("collection=..%2Fetc", None, {}, "invalid_request"),  # defect: 403 at the handshake
        ("collection=lobby&camera=%3Cscript%3E", None, {}, "invalid_request"),
        ("collection=" + "a" * 65, None, {}, "invalid_request"),
    ],
)
def test_refused_handshakes_close_with_1008_and_a_reason(
    setup: Setup, query: str, protocols: list[str] | None, headers: dict[str, str], expected: str
) -> None:
    with open_stream(
        setup.server, None, query, subprotocols=protocols, additional_headers=headers
    ) as stream:
        assert closed_with(stream) == (1008, expected)
    setup.healthy.still_served()


def test_a_key_in_the_url_is_refused_even_when_valid(setup: Setup) -> None:
    _, token = setup.key()
    with open_stream(setup.server, None, f"collection=lobby&api_key={token}") as stream:
        assert closed_with(stream) == (1008, "api_key_in_url")
    setup.healthy.still_served()


def test_a_key_for_another_collection_is_forbidden(setup: Setup) -> None:
    _, token = setup.key("hall")
    with open_stream(setup.server, token) as stream:
        assert stream.subprotocol == "facerec.v1"  # the key itself is never echoed
        assert closed_with(stream) == (1008, "forbidden")
    setup.healthy.still_served()


def test_revoking_a_key_closes_its_idle_stream(setup: Setup) -> None:
    key_id, token = setup.key()
    with open_stream(setup.server, token) as stream:
        stream.send(setup.frame)
        assert json.loads(stream.recv(timeout=WAIT_S))["frame"] == 0
        setup.revoke(key_id)  # no frame is sent after this: the key watcher must notice
        assert closed_with(stream) == (1008, "unauthorized")
    setup.healthy.still_served()


def test_revoking_a_key_closes_its_busy_stream(setup: Setup) -> None:
    key_id, token = setup.key()
    with open_stream(setup.server, token) as stream:
        stream.send(setup.frame)
        stream.recv(timeout=WAIT_S)
        stop = threading.Event()

        def feed() -> None:  # frames keep coming while the key is revoked
            with suppress(ConnectionClosed):
                while not stop.wait(0.05):
                    stream.send(setup.frame)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            setup.revoke(key_id)
            # The next frame's check or the key watcher, whichever comes first, ends it.
            assert closed_with(stream) == (1008, "unauthorized")
        finally:
            stop.set()
            feeder.join(timeout=WAIT_S)
    setup.healthy.still_served()


def answered_stream(held: ExitStack, setup: Setup, token: str) -> ClientConnection:
    """An open stream that answered a frame. A stream that an earlier test just closed may
    hold its process slot a moment longer (1013): then try again, within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        with ExitStack() as attempt:
            stream = attempt.enter_context(open_stream(setup.server, token))
            if answer_or_close_reason(stream, setup.frame) == "answered":
                held.enter_context(attempt.pop_all())
                return stream
        assert time.monotonic() < deadline, "no stream slot came free"
        time.sleep(0.2)


def test_one_key_cannot_hold_every_stream(setup: Setup) -> None:
    _, greedy = setup.key()
    _, other = setup.key()
    _, third = setup.key()
    with ExitStack() as held:
        for _ in range(PER_KEY):
            answered_stream(held, setup, greedy)
        with open_stream(setup.server, greedy) as extra:
            assert closed_with(extra) == (1008, "too_many_streams")
        # Another key still gets a stream: the healthy one holds 1, greedy 2, this 1 = 4.
        answered_stream(held, setup, other)
        with open_stream(setup.server, third) as over:  # the process cap of 4
            assert closed_with(over) == (1013, "server_busy")
    setup.healthy.still_served()


def test_a_connection_cut_without_closing_gives_its_slot_back(setup: Setup) -> None:
    _, token = setup.key()
    for _ in range(PER_KEY):
        with open_stream(setup.server, token) as stream:
            stream.send(setup.frame)
            stream.recv(timeout=WAIT_S)
            stream.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the connection dies
            stream.socket.close()
    # Both slots come back once the server notices the dead connections.
    deadline = time.monotonic() + WAIT_S
    outcomes: list[str] = []
    while len([o for o in outcomes[-PER_KEY:] if o == "answered"]) < PER_KEY:
        assert time.monotonic() < deadline, f"the cut streams kept their slots: {outcomes}"
        with ExitStack() as held:
            streams = [held.enter_context(open_stream(setup.server, token)) for _ in range(PER_KEY)]
            outcomes = [answer_or_close_reason(stream, setup.frame) for stream in streams]
        time.sleep(0.2)
    setup.healthy.still_served()


def answer_or_close_reason(stream: ClientConnection, frame: bytes) -> str:
    """ "answered", or the stable code of the close reason the stream got instead."""
    try:
        stream.send(frame)
        json.loads(stream.recv(timeout=WAIT_S))
    except ConnectionClosed as closed:
        return closed.rcvd.reason.split(":")[0] if closed.rcvd else "no close frame"
    return "answered"


def test_a_silent_stream_is_closed_after_the_idle_timeout(setup: Setup) -> None:
    _, token = setup.key()
    with open_stream(setup.server, token) as stream:
        stream.send(setup.frame)
        stream.recv(timeout=WAIT_S)
        assert closed_with(stream) == (1001, "idle_timeout")  # no frame sent since
    setup.healthy.still_served()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("a text message", (1003, "unsupported_data")),
        (b"\xff\xd8\xff\xe0 not really a JPEG", (1003, "undecodable_image")),
        (gif_bytes(), (1003, "unsupported_media_type")),  # an image, not of a frame format
        (b"\xff\xd8" + b"\x00" * MAX_FRAME_BYTES, (1009, "image_too_large")),
    ],
)
def test_bad_frames_close_only_their_own_stream(
    setup: Setup, message: str | bytes, expected: tuple[int, str]
) -> None:
    _, token = setup.key()
    with open_stream(setup.server, token) as stream:
        stream.send(message)
        assert closed_with(stream) == expected
    setup.healthy.still_served()


def test_a_plain_http_request_to_the_socket_is_401_without_a_key_and_404_with_one(
    setup: Setup,
) -> None:
    url = f"{setup.server.url}/stream?collection=lobby"
    assert httpx.get(url, timeout=WAIT_S).status_code == 401  # reveals no route to anyone
    _, token = setup.key()
    assert httpx.get(url, headers={"X-API-Key": token}, timeout=WAIT_S).status_code == 404
    setup.healthy.still_served()


def test_unknown_faces_are_enrolled_only_by_the_key_that_saw_them(
    setup: Setup, load_photo: LoadPhoto, lfw_photo: LfwPhoto
) -> None:
    _, owner = setup.key("lobby")
    _, neighbour = setup.key("lobby")
    stranger = load_photo(lfw_photo("Serena_Williams", 1))
    frames = [encode_jpeg(compose_frame([(stranger, (200, 110))], (i, 0))) for i in range(8)]
    unknown_id = None
    with open_stream(setup.server, owner) as stream:
        for data in frames:
            stream.send(data)
            (face,) = json.loads(stream.recv(timeout=WAIT_S))["faces"]
            unknown_id = face["unknown_id"] or unknown_id
            settle_server(setup.server.url, setup.admin)  # a camera the recognizer keeps up with
    assert unknown_id is not None  # nobody is enrolled in lobby: decided unknown
    form = {"subject": "Serena Williams", "unknown_id": unknown_id}

    def enroll(token: str, collection: str = "lobby") -> httpx.Response:
        return httpx.post(
            f"{setup.server.url}/enroll",
            params={"collection": collection},
            data=form,
            headers={"X-API-Key": token},
            timeout=WAIT_S,
        )

    assert enroll(neighbour).status_code == 404  # same collection, another key
    assert enroll(setup.admin, "lobby").status_code == 404  # even an admin: not its stream
    assert enroll(owner, "hall").status_code == 403  # the key's scope first
    enrolled = enroll(owner)
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["subject"] == "Serena Williams"
    setup.healthy.still_served()


def test_the_log_holds_no_key_and_one_line_per_stream(setup: Setup) -> None:
    key_id, token = setup.key()
    with open_stream(setup.server, token, "collection=lobby&camera=logcheck") as stream:
        stream.send(setup.frame)
        stream.recv(timeout=WAIT_S)
    with open_stream(setup.server, None, "collection=lobby&camera=nokey") as stream:
        assert closed_with(stream) == (1008, "unauthorized")

    def stream_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in setup.server.log().splitlines() if line[:1] == "{"]
        return [line for line in lines if line.get("route") == "/stream"]

    def logged() -> bool:  # both streams' lines are written when they end, a moment later
        lines = stream_lines()
        return any(line.get("key_id") == key_id for line in lines) and any(
            "camera=nokey" in line["message"] for line in lines
        )

    deadline = time.monotonic() + WAIT_S
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = setup.server.log()
    secret = token.split("_", 2)[2]
    assert secret not in log  # neither the key nor its secret part, anywhere
    banner = log[log.index(FIRST_KEY_BANNER) :].split("=" * 72, 1)[0]
    admin_secret = setup.admin.split("_", 2)[2]
    # Only in the first start's banner (its X-API-Key and export lines), nowhere else.
    assert log.count(admin_secret) == banner.count(admin_secret) == 2
    streams = stream_lines()
    mine = [line for line in streams if line.get("key_id") == key_id]
    assert [(line["method"], line["status"]) for line in mine] == [("WS", 1000)]
    # The keyless stream: one line, refused, no key, nothing of its query but the route.
    (keyless,) = [line for line in streams if "camera=nokey" in line["message"]]
    assert (keyless["status"], keyless["code"]) == (1008, "unauthorized")
    assert "key_id" not in keyless


def test_frames_are_charged_to_the_key_rate_budget(
    start_server: Any, tmp_path: Path, load_photo: LoadPhoto, lfw_photo: LfwPhoto
) -> None:
    rate, burst = 2.0, 2
    server = start_server(
        tmp_path / "data", rate_limit_per_second=str(rate), rate_limit_burst=str(burst)
    )
    (admin,) = server.printed_keys()
    created = httpx.post(
        f"{server.url}/keys",
        headers={"X-API-Key": admin},
        json={"name": "camera", "collections": ["lobby"]},
        timeout=WAIT_S,
    )
    assert created.status_code == 201, created.text
    token = created.json()["api_key"]
    photo = load_photo(lfw_photo("Gerhard_Schroeder", 25))
    frame = encode_jpeg(compose_frame([(photo, (195, 115))], (0, 0)))
    sent = 30
    with open_stream(server, token) as stream:
        started = time.monotonic()
        for _ in range(sent):  # far faster than 2 a second
            stream.send(frame)
        answers = [json.loads(stream.recv(timeout=WAIT_S))]
        while answers[-1]["frame"] != sent - 1:  # the newest frame is always answered
            answers.append(json.loads(stream.recv(timeout=WAIT_S)))
        elapsed = time.monotonic() - started
    # The handshake took one token of the burst; every answered frame took one more.
    assert len(answers) <= burst - 1 + rate * elapsed + 1
    assert len(answers) < sent
    assert len(answers) + sum(a["dropped_count"] for a in answers) == sent
    # The stream was throttled, not closed (it answered its newest frame), and the server
    # serves others.
    assert httpx.get(f"{server.url}/health", timeout=WAIT_S).status_code == 200


def log_lines(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line[:1] == "{"]


def test_a_client_flooding_frames_as_fast_as_it_can_does_not_stall_the_others(
    setup: Setup,
) -> None:
    _, token = setup.key()
    tiny = encode_jpeg(compose_frame([], (0, 0))[::10, ::10])  # 64x48, no face
    sent: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    with open_stream(setup.server, token) as flood:

        def flooding() -> None:
            try:
                while not stop.is_set() and len(sent) < 200_000:
                    flood.send(tiny)
                    sent.append(1)
            except BaseException as error:  # collected and asserted below
                errors.append(error)

        sender = threading.Thread(target=flooding)
        sender.start()
        try:
            setup.healthy.still_served()  # while the flood runs
        finally:
            stop.set()
            sender.join(timeout=WAIT_S)
        assert errors == []
        answers = [json.loads(flood.recv(timeout=WAIT_S))]
        while answers[-1]["frame"] != len(sent) - 1:
            answers.append(json.loads(flood.recv(timeout=WAIT_S)))
    assert len(answers) + sum(a["dropped_count"] for a in answers) == len(sent)
    assert len(answers) < len(sent)  # stale frames dropped, not queued
    setup.healthy.still_served()
