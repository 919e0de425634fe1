"""The /stream WebSocket on the real models: names, tracks, frame dropping, close codes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

if TYPE_CHECKING:
    from conftest import ClientFactory, LfwPhoto

    from tests.stream.conftest import EnrollPeople, Exchange, LoadPhoto, MovingFrames

BUSH_NAME, RUMSFELD_NAME = "George W. Bush", "Donald Rumsfeld"


@pytest.fixture(scope="module")
def client(build_client: ClientFactory) -> TestClient:
    """One inference worker: frames and background recognitions take turns, so the
    frame counts these tests expect names by hold on a loaded machine too. (With one
    worker per core, the default, frames run beside recognitions and names arrive
    after more frames, not later in time.)"""
    return build_client(inference_workers=1)


@pytest.fixture(scope="module")
def bush(load_photo: LoadPhoto, lfw_photo: LfwPhoto) -> Any:
    return load_photo(lfw_photo("George_W_Bush", 65))


@pytest.fixture(scope="module")
def rumsfeld(load_photo: LoadPhoto, lfw_photo: LfwPhoto) -> Any:
    return load_photo(lfw_photo("Donald_Rumsfeld", 51))


def only_face(answer: dict[str, Any]) -> dict[str, Any]:
    (face,) = answer["faces"]
    return dict(face)


def closed_with(socket: Any) -> int:
    """The code the server closes with (it sends nothing else first)."""
    with pytest.raises(WebSocketDisconnect) as closed:
        socket.receive_json()
    return int(closed.value.code)


def test_stream_names_people_and_keeps_their_track_ids_while_they_move(
    client: TestClient,
    collection: str,
    enroll_people: EnrollPeople,
    bush: Any,
    rumsfeld: Any,
    moving_frames: MovingFrames,
    exchange: Exchange,
) -> None:
    enroll_people(client, collection)
    with client.websocket_connect(f"/stream?collection={collection}") as socket:
        alone = exchange(socket, moving_frames([(bush, (60, 100))], 10))
        other = exchange(socket, moving_frames([(rumsfeld, (330, 120))], 10))
        both = exchange(
            socket, moving_frames([(bush, (40, 110)), (rumsfeld, (350, 110))], 10, step=(2, -2))
        )
    answers = alone + other + both
    assert [a["frame"] for a in answers] == list(range(30))
    assert all(a["dropped"] == [] and a["dropped_count"] == 0 for a in answers)
    assert all((a["width"], a["height"]) == (640, 480) for a in answers)

    # One person drifting across the frame: one track, named once the votes agree (the
    # recognitions run beside the answers and count from the next answer on), then named
    # on every frame, never anyone else.
    bush_track = {only_face(a)["track_id"] for a in alone}
    assert len(bush_track) == 1
    names = [only_face(a)["subject"] for a in alone]
    assert set(names) <= {None, BUSH_NAME}
    assert names[-4:] == [BUSH_NAME] * 4
    assert names[names.index(BUSH_NAME) :] == [BUSH_NAME] * (len(names) - names.index(BUSH_NAME))
    # ``recognised`` lists the tracks whose recognition was folded in for that answer;
    # recognition is not repeated on every frame once the name is decided.
    assert alone[0]["recognised"] == []  # the first frame's recognition was still running
    assert all(set(a["recognised"]) <= bush_track for a in alone)
    assert sum(len(a["recognised"]) for a in alone) < len(alone)

    # Someone else elsewhere: a new track with their name.
    rumsfeld_track = {only_face(a)["track_id"] for a in other}
    assert len(rumsfeld_track) == 1
    assert rumsfeld_track != bush_track
    assert [only_face(a)["subject"] for a in other][-4:] == [RUMSFELD_NAME] * 4

    # Both at once: two stable tracks, each with its own name.
    assert all(len(a["faces"]) == 2 for a in both)
    tracks = [{face["track_id"] for face in a["faces"]} for a in both]
    assert all(ids == tracks[0] for ids in tracks)
    final = {face["subject"] for face in both[-1]["faces"]}
    assert final == {BUSH_NAME, RUMSFELD_NAME}
    for face in both[-1]["faces"]:
        assert face["similarity"] > 0.3
        assert face["det_score"] > 0.5
        x1, y1, x2, y2 = face["bbox"]
        assert 0 <= x1 < x2 <= 640
        assert 0 <= y1 < y2 <= 480


def test_an_unenrolled_face_is_decided_unknown(
    client: TestClient,
    collection: str,
    enroll_people: EnrollPeople,
    load_photo: LoadPhoto,
    lfw_photo: LfwPhoto,
    moving_frames: MovingFrames,
    exchange: Exchange,
) -> None:
    enroll_people(client, collection)
    stranger = load_photo(lfw_photo("Gerhard_Schroeder", 25))
    with client.websocket_connect(f"/stream?collection={collection}") as socket:
        answers = exchange(socket, moving_frames([(stranger, (200, 100))], 5))
    last = only_face(answers[-1])
    assert last["subject"] is None
    assert last["similarity"] is not None  # recognised, and nobody matched


def test_overloaded_stream_drops_stale_frames_and_answers_the_newest(
    client: TestClient,
    collection: str,
    bush: Any,
    moving_frames: MovingFrames,
    jpeg: Callable[[Any], bytes],
) -> None:
    frames = [jpeg(frame) for frame in moving_frames([(bush, (60, 100))], 12)]
    limiter = client.app.state.runtime.inference_limiter  # type: ignore[attr-defined]
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    with client.websocket_connect(f"/stream?collection={collection}") as socket:
        # Hold every inference slot: the server can answer nothing while all the
        # frames arrive, as when a client sends faster than frames are processed.
        for borrower in borrowers:
            client.portal.call(limiter.acquire_on_behalf_of, borrower)  # type: ignore[union-attr]
        try:
            for data in frames:  # sent without reading any answer
                socket.send_bytes(data)
        finally:
            for borrower in borrowers:
                client.portal.call(limiter.release_on_behalf_of, borrower)  # type: ignore[union-attr]
        answers = [socket.receive_json()]
        while answers[-1]["frame"] != len(frames) - 1:
            answers.append(socket.receive_json())

    answered = [a["frame"] for a in answers]
    dropped = [index for a in answers for index in a["dropped"]]
    assert answered == sorted(set(answered))  # increasing, no repeats
    assert answered[-1] == len(frames) - 1  # the newest frame is never dropped
    assert dropped  # stale frames were skipped, not queued
    assert sum(a["dropped_count"] for a in answers) == len(dropped)
    assert sorted(answered + dropped) == list(range(len(frames)))  # each frame accounted once
    previous = -1
    for answer in answers:  # an answer reports the frames skipped since the previous one
        assert all(previous < index < answer["frame"] for index in answer["dropped"])
        previous = answer["frame"]


def test_answers_do_not_wait_for_a_recognition_in_flight(
    build_client: ClientFactory,
    collection: str,
    enroll_people: EnrollPeople,
    bush: Any,
    moving_frames: MovingFrames,
    exchange: Exchange,
) -> None:
    # Two inference workers: a held recognition must not hold the only one (detection
    # would wait for it, as with one worker a frame waits for a recognition running).
    client = build_client(inference_workers=2)
    enroll_people(client, collection)
    hub = client.app.state.streams  # type: ignore[attr-defined]
    real_embed = hub.engine.embed
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def held_embed(image: Any, detections: Any) -> Any:
        """The real recognizer, held until the test releases it."""
        calls.append(len(detections))
        entered.set()
        release.wait(timeout=120)  # a safety net should the test fail before releasing
        return real_embed(image, detections)

    client.app.state.streams = replace(  # type: ignore[attr-defined]
        hub, engine=replace(hub.engine, embed=held_embed)
    )
    frames = moving_frames([(bush, (60, 100))], 10)
    back_and_forth = frames + frames[::-1]
    try:
        with client.websocket_connect(f"/stream?collection={collection}") as socket:
            during = exchange(socket, frames[:1], paced=False)
            assert entered.wait(timeout=120)  # the first frame's recognition is running
            during += exchange(socket, frames[1:6], paced=False)
            in_flight = len(calls)
            release.set()
            after: list[dict[str, Any]] = []
            for step in range(60):  # a bound on frames, not on time
                after += exchange(socket, [back_and_forth[step % len(back_and_forth)]])
                if only_face(after[-1])["subject"] == BUSH_NAME:
                    break
    finally:
        release.set()
    answers = during + after
    assert [a["frame"] for a in answers] == list(range(len(answers)))
    track = {only_face(a)["track_id"] for a in answers}
    assert len(track) == 1
    # Held: every frame is still answered, unnamed, nothing folded, no second recognition.
    assert in_flight == 1
    assert all(only_face(a)["subject"] is None and a["recognised"] == [] for a in during)
    # Released: the held result is folded into an answer once it is done, the name follows.
    assert next(a["recognised"] for a in after if a["recognised"]) == list(track)
    assert only_face(after[-1])["subject"] == BUSH_NAME
    assert all(len(a["recognised"]) <= 1 for a in answers)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"this is not a JPEG", 1003),
        (b"", 1003),
        ("a text message", 1003),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", 1003),  # an image, of a format not accepted
    ],
)
def test_bad_frames_close_the_stream_with_1003(
    client: TestClient, collection: str, message: bytes | str, code: int
) -> None:
    with client.websocket_connect(f"/stream?collection={collection}") as socket:
        if isinstance(message, str):
            socket.send_text(message)
        else:
            socket.send_bytes(message)
        assert closed_with(socket) == code


def test_oversized_frames_close_the_stream_with_1009(
    build_client: ClientFactory, bush: Any, moving_frames: MovingFrames, jpeg: Callable[..., bytes]
) -> None:
    (frame,) = moving_frames([(bush, (60, 100))], 1)
    data = jpeg(frame)
    by_bytes = build_client(stream_max_frame_bytes=len(data) - 1)
    with by_bytes.websocket_connect("/stream") as socket:
        socket.send_bytes(data)
        assert closed_with(socket) == 1009
    by_pixels = build_client(stream_max_frame_pixels=640 * 480 - 1)
    with by_pixels.websocket_connect("/stream") as socket:
        socket.send_bytes(data)
        assert closed_with(socket) == 1009


def test_streams_over_the_cap_are_told_to_try_again_later(
    build_client: ClientFactory, bush: Any, moving_frames: MovingFrames, exchange: Exchange
) -> None:
    capped = build_client(stream_max_concurrent=1)
    frames = moving_frames([(bush, (60, 100))], 1)
    with capped.websocket_connect("/stream") as first:
        with capped.websocket_connect("/stream") as second:
            assert closed_with(second) == 1013
        assert exchange(first, frames)[0]["frame"] == 0  # the open stream is unaffected
    with capped.websocket_connect("/stream") as again:  # the slot was given back
        assert exchange(again, frames)[0]["frame"] == 0


def test_an_invalid_collection_is_refused_with_1008(client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect("/stream?collection=../etc") as socket,
    ):
        socket.receive_json()
    assert refused.value.code == 1008


def test_a_broken_client_does_not_disturb_another_stream(
    client: TestClient,
    collection: str,
    enroll_people: EnrollPeople,
    bush: Any,
    moving_frames: MovingFrames,
    exchange: Exchange,
) -> None:
    enroll_people(client, collection)
    frames = moving_frames([(bush, (60, 100))], 6)
    with client.websocket_connect(f"/stream?collection={collection}") as healthy:
        first = exchange(healthy, frames[:3])
        with client.websocket_connect(f"/stream?collection={collection}") as broken:
            broken.send_bytes(b"\xff\xd8\xff garbage that starts like a JPEG")
            assert closed_with(broken) == 1003
        rest = exchange(healthy, frames[3:])
    answers = first + rest
    assert [a["frame"] for a in answers] == list(range(6))
    assert {only_face(a)["track_id"] for a in answers} == {only_face(first[0])["track_id"]}
    assert only_face(answers[-1])["subject"] == BUSH_NAME
    assert client.get("/health").status_code == 200


def test_the_page_and_its_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="labels"' in page.text
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = client.get(asset)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]


def test_with_auth_on_a_stream_needs_a_key_for_its_collection(
    build_client: ClientFactory, bush: Any, moving_frames: MovingFrames, exchange: Exchange
) -> None:
    guarded = build_client(auth=True)
    store = guarded.app.state.runtime.guard.store  # type: ignore[attr-defined]
    token = store.create(name="camera", collections=["lobby"], admin=False).token
    frames = moving_frames([(bush, (60, 100))], 1)
    as_protocol = ["facerec.v1", f"facerec.key.{token}"]
    for url, options, reason in [
        ("/stream?collection=lobby", {}, "unauthorized"),
        (
            "/stream?collection=lobby",
            {"subprotocols": ["facerec.v1", "facerec.key.frk_no"]},
            "unauthorized",
        ),
        ("/stream?collection=hall", {"subprotocols": as_protocol}, "forbidden"),
        ("/stream?collection=hall", {"headers": {"X-API-Key": token}}, "forbidden"),
        # A key in the URL is refused whatever it is: URLs end up in logs and histories.
        (f"/stream?collection=lobby&api_key={token}", {}, "api_key_in_url"),
        ("/stream?collection=lobby", {"subprotocols": [f"facerec.key.{token}"]}, "unauthorized"),
    ]:
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            guarded.websocket_connect(url, **options) as ws,  # type: ignore[arg-type]
        ):
            ws.receive_json()
        assert refused.value.code == 1008
        assert refused.value.reason.split(":")[0] == reason, (url, options)
    with guarded.websocket_connect("/stream?collection=lobby", subprotocols=as_protocol) as socket:
        assert socket.accepted_subprotocol == "facerec.v1"  # the key is never echoed back
        assert exchange(socket, frames)[0]["frame"] == 0
    with guarded.websocket_connect(
        "/stream?collection=lobby", headers={"X-API-Key": token}
    ) as socket:
        assert exchange(socket, frames)[0]["frame"] == 0


def test_latency_is_the_server_time_within_the_round_trip(
    client: TestClient, collection: str, bush: Any, moving_frames: MovingFrames, jpeg: Any
) -> None:
    frames = [jpeg(frame) for frame in moving_frames([(bush, (60, 100))], 5)]
    with client.websocket_connect(f"/stream?collection={collection}") as socket:
        for data in frames:
            sent = time.perf_counter()
            socket.send_bytes(data)
            answer = socket.receive_json()
            round_trip_ms = (time.perf_counter() - sent) * 1000.0
            # Received after the client sent it, answered before the client got it.
            assert 0.0 < answer["latency_ms"] <= round_trip_ms


def test_per_camera_figures_are_in_the_metrics_with_bounded_names(
    build_client: ClientFactory, bush: Any, moving_frames: MovingFrames, exchange: Exchange
) -> None:
    metered = build_client(stream_max_cameras=2)
    frames = moving_frames([(bush, (60, 100))], 3)
    counts = {"door": 3, "hall": 2, "roof": 1, "attic": 1}
    for camera, count in counts.items():
        with metered.websocket_connect(f"/stream?camera={camera}") as socket:
            exchange(socket, frames[:count])
    text = metered.get("/metrics").text

    def value(series: str, camera: str) -> float:
        prefix = f'{series}{{camera="{camera}"}} '
        (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(line.removeprefix(prefix))

    # The first two names get their own label, the later ones share "other".
    assert value("facerec_stream_frames_processed_total", "door") == 3
    assert value("facerec_stream_frames_processed_total", "hall") == 2
    assert value("facerec_stream_frames_processed_total", "other") == 2
    assert 'camera="roof"' not in text
    assert value("facerec_stream_latency_seconds_count", "door") == 3
    assert value("facerec_stream_frames_dropped_total", "door") == 0
    assert value("facerec_streams_open", "door") == 0
    # Frames of the last 5 s (a unit test pins the window: tests/stream/test_stream_metrics.py).
    assert 0 <= value("facerec_stream_processed_fps", "door") <= 3 / 5
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        metered.websocket_connect("/stream?camera=no%20spaces") as ws,
    ):
        ws.receive_json()
    assert (refused.value.code, refused.value.reason.split(":")[0]) == (1008, "invalid_request")


def test_stream_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, models_dir: Any, tmp_path: Any
) -> None:
    from app.config import Settings
    from app.main import build_runtime, build_stream_hub

    environment = {
        "FACEREC_STREAM_MAX_CONCURRENT": "3",
        "FACEREC_STREAM_MAX_PER_KEY": "1",
        "FACEREC_STREAM_IDLE_TIMEOUT_S": "7.5",
        "FACEREC_STREAM_KEY_CHECK_S": "0.5",
        "FACEREC_STREAM_SEND_TIMEOUT_S": "4",
        "FACEREC_STREAM_REID_INTERVAL": "7",
        "FACEREC_STREAM_MAX_RECOGNITIONS_PER_FRAME": "2",
        "FACEREC_STREAM_VOTE_WINDOW": "6",
        "FACEREC_STREAM_MIN_VOTES": "3",
        "FACEREC_STREAM_MAX_MISSED_FRAMES": "4",
        "FACEREC_STREAM_INSTANT_MARGIN": "0.3",
        "FACEREC_STREAM_SPLIT_SIMILARITY": "0.9",
        "FACEREC_STREAM_UNKNOWN_TTL_S": "60",
        "FACEREC_STREAM_UNKNOWN_CAPACITY": "10",
        "FACEREC_STREAM_UNKNOWN_CROPS": "2",
        "FACEREC_STREAM_MAX_CAMERAS": "5",
        "FACEREC_STREAM_MAX_FRAME_BYTES": "100000",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FACEREC_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("FACEREC_DATA_DIR", str(tmp_path / "gallery"))
    monkeypatch.setenv("FACEREC_AUTH", "false")
    runtime = build_runtime(Settings())
    try:
        hub = build_stream_hub(runtime)
    finally:
        runtime.close()
    engine = hub.engine
    assert (hub.slots.capacity, hub.slots.per_key, hub.max_frame_bytes) == (3, 1, 100000)
    assert (hub.timeouts.idle_s, hub.timeouts.key_check_s, hub.timeouts.send_s) == (7.5, 0.5, 4)
    assert (engine.policy.interval, engine.policy.max_per_frame) == (7, 2)
    assert (engine.votes.window, engine.votes.min_votes) == (6, 3)
    assert engine.votes.instant_similarity == pytest.approx(engine.threshold + 0.3)
    assert (engine.tracking.max_missed, engine.split_similarity) == (4, 0.9)
    assert (hub.unknowns.ttl_s, hub.unknowns.capacity, hub.unknowns.crops_per_face) == (60, 10, 2)
    assert hub.metrics.cameras.limit == 5


class StallAnswers:
    """ASGI wrapper: after ``allowed`` answers, the socket's writes never complete (a client
    that stopped reading, its TCP window full); the close still goes out."""

    def __init__(self, app: Any, allowed: int) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sent = 0

        async def stalling_send(message: Any) -> None:
            nonlocal sent
            if message["type"] == "websocket.send":
                sent += 1
                if sent > self.allowed:
                    await anyio.sleep_forever()
            await send(message)

        await self.app(scope, receive, stalling_send if scope["type"] == "websocket" else send)


def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer(
    models_dir: Any, tmp_path: Any, bush: Any, moving_frames: MovingFrames, jpeg: Any
) -> None:
    from app.config import Settings
    from app.main import create_app

    settings = Settings(
        models_dir=models_dir, data_dir=tmp_path / "gallery", auth=False, stream_send_timeout_s=0.5
    )
    app = create_app(settings)
    frame = jpeg(moving_frames([(bush, (60, 100))], 1)[0])
    with TestClient(StallAnswers(app, allowed=2)) as stalled:  # type: ignore[arg-type]
        with stalled.websocket_connect("/stream") as socket:
            for _ in range(2):
                socket.send_bytes(frame)
                socket.receive_json()
            socket.send_bytes(frame)  # its answer never leaves: 0.5 s later the stream ends
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_json()
        assert (closed.value.code, closed.value.reason.split(":")[0]) == (1008, "slow_consumer")
        with stalled.websocket_connect("/stream") as again:  # its slot was given back
            again.send_bytes(frame)
            assert again.receive_json()["frame"] == 0
