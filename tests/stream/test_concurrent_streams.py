"""Four streams at once on the real models: a flooding camera does not starve the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from conftest import LfwPhoto

    from tests.stream.conftest import LoadPhoto, MovingFrames

HEALTHY_FRAMES = 8
# The flooding camera sends a frame every FLOOD_PERIOD_S (hundreds a second, ten times a
# webcam), at most MAX_FLOOD_FRAMES: bounded in count whatever the machine's speed.
FLOOD_PERIOD_S = 0.002
MAX_FLOOD_FRAMES = 100_000


def test_one_flooding_stream_leaves_the_others_their_frames(
    client: TestClient,
    collection: str,
    load_photo: LoadPhoto,
    lfw_photo: LfwPhoto,
    moving_frames: MovingFrames,
    jpeg: Callable[[Any], bytes],
) -> None:
    people = [("George_W_Bush", 65), ("Donald_Rumsfeld", 51), ("Tony_Blair", 48)]
    healthy_frames = [
        [jpeg(f) for f in moving_frames([(load_photo(lfw_photo(*who)), (150, 100))], 8)]
        for who in people
    ]
    powell = load_photo(lfw_photo("Colin_Powell", 71))
    flood_frame = jpeg(moving_frames([(powell, (150, 90))], 1)[0])
    healthy_answers: list[list[dict[str, Any]]] = [[] for _ in people]
    errors: list[BaseException] = []
    healthy_done = threading.Event()
    flood_sent_at_done: list[int] = []

    with (
        client.websocket_connect(f"/stream?collection={collection}&camera=flood") as flood,
        client.websocket_connect(f"/stream?collection={collection}&camera=c1") as first,
        client.websocket_connect(f"/stream?collection={collection}&camera=c2") as second,
        client.websocket_connect(f"/stream?collection={collection}&camera=c3") as third,
    ):

        def healthy(index: int, socket: Any) -> None:
            try:
                for data in healthy_frames[index]:
                    socket.send_bytes(data)
                    healthy_answers[index].append(socket.receive_json())
            except BaseException as error:  # collected and asserted below
                errors.append(error)

        def flooding() -> int:
            sent = 0
            while not healthy_done.is_set() and sent < MAX_FLOOD_FRAMES:
                flood.send_bytes(flood_frame)
                sent += 1
                time.sleep(FLOOD_PERIOD_S)
            flood_sent_at_done.append(sent)
            return sent

        workers = [
            threading.Thread(target=healthy, args=(index, socket))
            for index, socket in enumerate((first, second, third))
        ]
        for worker in workers:
            worker.start()
        flooder = threading.Thread(target=flooding)
        flooder.start()
        for worker in workers:
            worker.join(timeout=600)
        healthy_done.set()
        flooder.join(timeout=600)
        assert not any(worker.is_alive() for worker in [*workers, flooder])
        sent = flood_sent_at_done[0]
        flood_answers = [flood.receive_json()]
        while flood_answers[-1]["frame"] != sent - 1:
            flood_answers.append(flood.receive_json())

    assert errors == []
    for answers in healthy_answers:
        # Every frame of every other camera answered, in order, none dropped.
        assert [a["frame"] for a in answers] == list(range(HEALTHY_FRAMES))
        assert all(a["dropped_count"] == 0 and len(a["faces"]) == 1 for a in answers)
    # The flood's stale frames were dropped, not queued: each frame answered or dropped once.
    assert len(flood_answers) < sent
    assert len(flood_answers) + sum(a["dropped_count"] for a in flood_answers) == sent
    # Fair turns: the flooding camera got at most about its share of the inference worker
    # (one frame in, one answered, per turn of the others), not every frame it sent.
    assert len(flood_answers) <= 2 * HEALTHY_FRAMES + 2
